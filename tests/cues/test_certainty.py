"""self_certainty, answer_certainty and the sampler's answer-token mask, by hand."""

import math
from dataclasses import replace

import pytest
import torch

from srmcr.cues.answer_certainty import AnswerCertainty, answer_certainty
from srmcr.cues.self_certainty import SelfCertainty, self_certainty
from srmcr.rollout import answer_token_mask
from tests.cues.fakes import make_rollout

L2 = math.log(0.5)
SELF = [  # log-probs, mask, has_answer, expected, reason
    ([L2, L2, 0.0], [1, 1, 0], True, 0.5, "geometric mean probability of the masked tokens"),
    ([L2, 0.0, -9.0], [1, 1, 0], True, math.sqrt(0.5), "padding ignored, whatever it holds"),
    ([L2, L2, L2], [1, 1, 1], False, 0.0, "no answer: 0, never neutral"),
    ([L2, L2, L2], [0, 0, 0], True, math.nan, "no tokens: abstain"),
]


@pytest.mark.parametrize(("logp", "mask", "has_answer", "expected", "reason"), SELF,
                         ids=[c[4] for c in SELF])
def test_self_certainty(logp, mask, has_answer, expected, reason):
    got = self_certainty(torch.tensor([logp]), torch.tensor([mask]), torch.tensor([has_answer]))
    assert got.item() == pytest.approx(expected, nan_ok=True)


ANSWER = [  # log-probs, answer mask, expected, reason
    ([L2, -5.0, math.log(0.8)], [0, 0, 1], 0.8, "only the answer's tokens count"),
    ([-5.0, L2, L2], [0, 1, 1], 0.5, "two answer tokens: geometric mean"),
    ([L2, L2, L2], [0, 0, 0], 0.0, "no answer tokens: 0"),
]


@pytest.mark.parametrize(("logp", "mask", "expected", "reason"), ANSWER, ids=[c[3] for c in ANSWER])
def test_answer_certainty(logp, mask, expected, reason):
    assert answer_certainty(torch.tensor([logp]), torch.tensor([mask])).item() == \
        pytest.approx(expected)


class CharTokenizer:
    """Decodes token id i to PIECES[i]: the answer span is found from the pieces' characters."""

    PIECES = ["<think>", "I see 3.", "</think>", "<answer>", "3", " circles", "</answer>", "",
              "<ans", "wer>3</", "answer>"]

    def batch_decode(self, ids, skip_special_tokens=True):
        return [self.PIECES[int(row[0])] for row in ids]


MASKS = [  # token ids, length, expected answer mask, reason
    ([0, 1, 2, 3, 4, 5, 6, 7], 8, [0, 0, 0, 0, 1, 1, 0, 0], "the tokens between the tags"),
    ([0, 1, 2, 8, 9, 10, 7, 7], 6, [0, 0, 0, 0, 1, 0, 0, 0],
     "a token holding tag and answer together counts"),
    ([0, 1, 2, 3, 4, 5, 7, 7], 6, [0] * 8, "no closing tag: no answer"),
    ([0, 1, 2, 3, 4, 5, 6, 7], 4, [0] * 8, "tokens past the end (padding) are not read"),
]


@pytest.mark.parametrize(("ids", "length", "expected", "reason"), MASKS, ids=[c[3] for c in MASKS])
def test_answer_token_mask(ids, length, expected, reason):
    mask = torch.tensor([[1] * length + [0] * (8 - length)])
    got = answer_token_mask(CharTokenizer(), torch.tensor([ids]), mask)
    assert got.tolist() == [expected]


def test_metrics_match_the_functions_and_need_their_inputs():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9, 0.9]] * 2))
    rollout = make_rollout(["q"] * 2, ["<think>a</think><answer>1</answer>", "<think>a</think>"],
                           logp=logp, answer_mask=torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]]))
    assert AnswerCertainty().score(rollout).tolist() == pytest.approx([0.9, 0.0])
    assert SelfCertainty().score(rollout).tolist() == pytest.approx(
        [math.exp(logp[0].mean().item()), 0.0])
    for cue in (AnswerCertainty(), SelfCertainty()):
        with pytest.raises(ValueError, match="rollout.logp"):
            cue.score(replace(rollout, logp=None))
