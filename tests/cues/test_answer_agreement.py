"""answer_agreement = 1 where the normalized answer is the group's majority (first on ties)."""

import math

import pytest
import torch

from srmcr.cues import CUE_NAMES
from srmcr.cues.answer_agreement import AnswerAgreement, answer_agreement, answer_key
from srmcr.reward import SelfReward
from tests.cues.fakes import make_rollout

NAN = math.nan


def _completion(answer: str | None) -> str:
    think = "<think>Step 1: count the shapes in the image.</think>"
    return think if answer is None else f"{think}<answer>{answer}</answer>"


CASES = [  # answers of ONE group (None: no <answer> block), expected scores, reason
    (["3", "3", "3", "3"], [1, 1, 1, 1], "all agree"),
    (["1", "2", "3", "4"], [1, 0, 0, 0], "all differ: a four-way tie, the first answer wins"),
    (["red", "blue", "blue", "red"], [1, 0, 0, 1], "2-2 tie: the answer that appears first wins"),
    (["blue", "red", "red", "blue"], [1, 0, 0, 1], "same tie, other order: first is blue"),
    (["2", "5", "5", "2", "5"], [0, 1, 1, 0, 1], "a plain majority beats the first answer"),
    (["3", None, "4", "4"], [0, 0, 1, 1],
     "a missing answer does not vote and scores 0, like disagreeing (never neutral)"),
    ([None, None, "4", None], [0, 0, 1, 0], "a group with one answer only: it agrees"),
    ([None, None, None, None], [0, 0, 0, 0], "no answer in the group: all 0 (z = 0)"),
    (["", "?", "7", "7"], [0, 0, 1, 1], "empty after normalization counts as no answer"),
    (["Three circles.", "3 circle", "three", "4"], [1, 1, 0, 0],
     "normalized (number words, plurals, case, punctuation); '3' alone is another answer"),
    (["Yes", "yes!", "No", "no"], [1, 1, 0, 0], "yes/no by case and punctuation; 2-2 tie"),
]


@pytest.mark.parametrize(("answers", "expected", "reason"), CASES, ids=[c[2] for c in CASES])
def test_values(answers, expected, reason):
    got = answer_agreement([_completion(a) for a in answers], group_size=len(answers))
    assert got.tolist() == pytest.approx(expected, nan_ok=True)


def test_groups_are_independent():
    answers = ["red", "blue", "blue", "2", "3", "2"]
    got = answer_agreement([_completion(a) for a in answers], group_size=3)
    assert got.tolist() == [0, 1, 1, 1, 0, 1]


def test_answer_key():
    assert answer_key(None) is None and answer_key(" . ") is None
    assert answer_key("The Two Squares") == answer_key("2 square") == "2 square"


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="groups of 4"):
        answer_agreement([_completion("1")] * 6, group_size=4)


def test_metric_matches_function_and_accumulates():
    texts = [_completion(a) for a in ["1", "1", "2", None, "x", "y", "y", "y"]]
    metric = AnswerAgreement()
    first = metric.score(make_rollout(["q"] * 4, texts[:4], group_size=4))
    second = metric.score(make_rollout(["q"] * 4, texts[4:], group_size=4))
    metric.update(first)
    metric.update(second)
    expected = answer_agreement(texts, group_size=4)
    assert torch.equal(torch.cat([first, second]), expected)
    assert metric.compute().item() == pytest.approx(expected.nanmean().item())
    assert metric.needs == ()  # the rollout alone


def test_reward_accepts_it_and_the_default_is_the_five_cues_and_answer_support():
    assert "answer_agreement" not in CUE_NAMES
    assert SelfReward().names == [*CUE_NAMES, "answer_support"]
    reward = SelfReward(cues=["answer_agreement"])
    texts = [_completion(a) for a in ["1", "1", "2", "2"]]
    out = reward(make_rollout(["q"] * 4, texts, group_size=4))
    assert out.scores[:, 0].tolist() == [1, 1, 0, 0] and not reward.needs


SUPPORT = [  # answers of ONE group, expected vote shares, reason
    (["3", "3", "3", "3"], [1, 1, 1, 1], "all agree: everyone supported by all others"),
    (["3", "3", "4", "5"], [1 / 3, 1 / 3, 0, 0], "the pair shares 1 of 3 others"),
    (["red", "red", "blue", "blue"], [1 / 3, 1 / 3, 1 / 3, 1 / 3], "a 2-2 tie ranks alike"),
    (["3", None, "3", ""], [1 / 3, 0, 1 / 3, 0],
     "no answer (or an empty one) scores 0 and supports nobody"),
    (["Three circles.", "3 circle", "3", "4"], [1 / 3, 1 / 3, 0, 0], "normalized answers"),
]


@pytest.mark.parametrize(("answers", "expected", "reason"), SUPPORT, ids=[c[2] for c in SUPPORT])
def test_answer_support(answers, expected, reason):
    from srmcr.cues.answer_agreement import answer_support
    got = answer_support([_completion(a) for a in answers], group_size=len(answers))
    assert got.tolist() == pytest.approx(expected)


def test_answer_support_ranks_a_runner_up_above_a_stray_answer():
    from srmcr.cues.answer_agreement import answer_support
    answers = ["2", "2", "2", "3", "3", "5"]
    got = answer_support([_completion(a) for a in answers], group_size=6)
    assert got[0] > got[3] > got[5]  # majority > runner-up > stray; agreement ties the last two
    assert answer_agreement([_completion(a) for a in answers], 6)[3:].tolist() == [0, 0, 0]
