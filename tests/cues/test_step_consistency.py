"""step_consistency = mean adjacent cos⁺ of step embeddings; one step abstains (NaN)."""

import math

import pytest
import torch

from srmcr.cues.step_consistency import StepConsistency, step_consistency
from tests.cues.fakes import make_rollout

CASES = [
    ("<think>Step 1: alpha beta gamma.\nStep 2: alpha beta delta.</think>", 2 / 3,
     "consecutive steps share 2 of 3 words"),
    ("<think>Step 1: alpha beta gamma.\nStep 2: delta epsilon zeta.</think>", 0.0,
     "unrelated consecutive steps"),
    ("<think>Step 1: alpha beta gamma.\nStep 2: alpha beta gamma.\nStep 3: delta epsilon zeta."
     "</think>", 0.5, "mean of adjacent pairs only: (1 + 0) / 2"),
    ("<think>alpha beta gamma\ndelta epsilon zeta</think>", 0.0, "newline-split steps"),
    ("<think>Step 1: alpha beta gamma.</think><answer>x</answer>", math.nan,
     "a single step abstains"),
    ("<think></think><answer>x</answer>", 0.0, "empty reasoning scores 0, not NaN"),
]


@pytest.mark.parametrize(("completion", "expected", "reason"), CASES, ids=[c[2] for c in CASES])
def test_values(fake, completion, expected, reason):
    got = step_consistency(["q"], [completion], fake).item()
    assert got == pytest.approx(expected, abs=1e-6, nan_ok=True)


def test_unrelated_steps_score_lower_with_minilm(minilm):
    related = ("<think>Step 1: I count the red circles in the image.\nStep 2: The red circles in "
               "the image number three.</think>")
    unrelated = ("<think>Step 1: I count the red circles in the image.\nStep 2: Bananas grow in "
                 "tropical climates worldwide.</think>")
    good, bad = step_consistency(["How many red circles?"] * 2, [related, unrelated], minilm)
    assert good > bad


def test_unicode_and_long_text_stay_in_range(minilm):
    long = "<think>" + "".join(f"Step {i}: the circle number {i} is red.\n" for i in range(400))
    odd = "<think>Step 1: 一个 红色的 圆 🔴.\nStep 2: Δ ≈ 3·π über alles.</think>"
    s = step_consistency(["q", "q"], [long + "</think>", odd], minilm)
    assert ((s >= 0) & (s <= 1)).all()


def test_metric_update_over_batches_equals_function(fake):
    cs = [c[0] for c in CASES]
    metric = StepConsistency(encoder=fake)
    first = metric.score(make_rollout(["q"] * 3, cs[:3]))
    second = metric.score(make_rollout(["q"] * 3, cs[3:]))
    metric.update(first)
    metric.update(second)
    expected = step_consistency(["q"] * 6, cs, fake)
    torch.testing.assert_close(torch.cat([first, second]), expected, rtol=0, atol=0,
                               equal_nan=True)  # score() is the pure function
    assert metric.compute().item() == pytest.approx(expected.nanmean().item())
