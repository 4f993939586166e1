"""visual_grounding = sigmoid(Δ/κ), Δ = masked mean of log π(t|image) − log π(t|blank)."""

import math

import pytest
import torch

from srmcr.cues.visual_grounding import VisualGrounding, visual_grounding
from tests.cues.fakes import make_rollout

INF = math.inf
A = "<think>Step 1: a red circle.</think><answer>1</answer>"
CASES = [
    ([-1.0, -1.0, -1.0], [-1.5, -1.5, -1.5], [1, 1, 1], 0.5, 1 / (1 + math.exp(-1.0)),
     "image makes reasoning likelier: Δ = 0.5"),
    ([-2.0, -1.0], [-2.0, -1.0], [1, 1], 0.5, 0.5, "image changes nothing: Δ = 0"),
    ([-1.0, -2.0], [-1.0, -1.5], [1, 1], 0.5, 1 / (1 + math.exp(0.5)), "image hurts: Δ = -0.25"),
    ([-1.0, -INF], [-2.0, 0.0], [1, 0], 0.5, 1 / (1 + math.exp(-2.0)),
     "padded tokens (even -inf) ignored: Δ = 1"),
    ([-1.0, -1.0], [-2.0, -2.0], [1, 1], 2.0, 1 / (1 + math.exp(-0.5)), "κ = 2 flattens"),
    ([-1.0, -1.0], [-2.0, -2.0], [0, 0], 0.5, math.nan, "no tokens: abstain"),
]


@pytest.mark.parametrize(("logp", "blank", "mask", "kappa", "expected", "reason"), CASES,
                         ids=[c[5] for c in CASES])
def test_values(logp, blank, mask, kappa, expected, reason):
    got = visual_grounding(torch.tensor([logp]), torch.tensor([blank]), torch.tensor([mask]),
                           kappa).item()
    assert got == pytest.approx(expected, abs=1e-6, nan_ok=True)


def test_no_answer_scores_zero_even_when_the_image_helps():
    logp, blank = torch.tensor([[-0.5, -0.5]] * 2), torch.tensor([[-3.0, -3.0]] * 2)
    got = visual_grounding(logp, blank, torch.ones(2, 2), has_answer=torch.tensor([True, False]))
    assert got[0] > 0.9 and got[1] == 0.0  # dropping the answer must not pay


def test_grounded_reasoning_scores_higher():
    logp = torch.tensor([[-0.5, -0.7, -0.2], [-2.0, -2.5, -1.8]])
    blank = torch.tensor([[-2.0, -2.5, -1.8], [-0.5, -0.7, -0.2]])
    grounded, blind = visual_grounding(logp, blank, torch.ones(2, 3))
    assert grounded > 0.5 > blind


def test_metric_takes_the_blank_logprobs_and_matches_function():
    logp, blank = torch.randn(4, 5), torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 4)
    metric = VisualGrounding()
    assert metric.needs == ("blank_logp",)  # from the signature of score
    first = metric.score(make_rollout(["q"] * 2, [A] * 2, logp=logp[:2], mask=mask[:2]),
                         blank_logp=blank[:2])
    second = metric.score(make_rollout(["q"] * 2, [A] * 2, logp=logp[2:], mask=mask[2:]),
                          blank_logp=blank[2:])
    metric.update(first)
    metric.update(second)
    expected = visual_grounding(logp, blank, mask)
    assert torch.equal(torch.cat([first, second]), expected)
    assert metric.compute().item() == pytest.approx(expected.mean().item())
