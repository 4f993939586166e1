"""The control rewards of benchmarks/rewards.py: an oracle on the labels, a random reward and
brevity (the optimizer's positive control)."""

import random

import pytest

from benchmarks.rewards import brevity, oracle, random_reward
from srmcr.reward import SelfReward
from srmcr.reward_functions import Records, RewardFunctionArgs
from tests.cues.fakes import make_rollout


def _completion(answer: str | None) -> str:
    think = "<think>Step 1: I count the circles.</think>"
    return think if answer is None else f"{think}<answer>{answer}</answer>"


ORACLE = [  # the completion's answer, the record's label, expected, reason
    ("3", "3", 1.0, "the same answer"),
    ("three circles", "3", 1.0, "matched as srmcr.answers.is_correct matches (number words)"),
    ("4", "3", 0.0, "a wrong answer"),
    (None, "3", 0.0, "no answer is never right"),
    ("", "3", 0.0, "an empty answer is no answer"),
    ("3", None, None, "a record without a label: abstain"),
]


@pytest.mark.parametrize(("answer", "label", "expected", "reason"), ORACLE,
                         ids=[c[3] for c in ORACLE])
def test_oracle(answer, label, expected, reason):
    assert oracle(["How many circles?"], [_completion(answer)], answer=[label]) == [expected]


def test_oracle_as_a_reward_column_reads_the_labels():
    reward = SelfReward(cues=[], functions=[RewardFunctionArgs("benchmarks.rewards:oracle",
                                                               uses_labels=True)])
    texts = [_completion(a) for a in ("3", "4", "red", "blue")]
    out = reward(make_rollout(["q0", "q0", "q1", "q1"], texts, group_size=2),
                 records=Records(sources=["s0", "s1"], answers=["3", "blue"]))
    assert out.scores[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out.rewards[0] > out.rewards[1] and out.rewards[3] > out.rewards[2]


def test_random_reward_is_a_fair_coin_independent_of_the_completions():
    random.seed(0)
    draws = random_reward(["q"] * 4000, ["same text"] * 4000)
    assert set(draws) == {0.0, 1.0} and abs(sum(draws) / 4000 - 0.5) < 0.03
    random.seed(1)
    first = random_reward(["q"] * 8, [_completion("3")] * 8)
    random.seed(1)
    assert random_reward(["q"] * 8, [_completion(str(i)) for i in range(8)]) == first


def test_brevity_rewards_fewer_steps_whatever_the_answer():
    one = "<think>Step 1: A1 square 4, total 4</think><answer>4</answer>"
    three = ("<think>Step 1: A1 square 4, total 4\nStep 2: B2 circle 0, total 4\n"
             "Step 3: C3 triangle 3, total 7</think><answer>7</answer>")
    # text without step markers is one step (srmcr.parsing.split_steps)
    assert brevity(["q"] * 3, [one, three, "no format at all"]) == [-1.0, -3.0, -1.0]
