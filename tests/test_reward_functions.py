"""The user's reward functions: named by import path, a reward column like a cue, labels only
on request, and bad return values end in one clear error that names the function."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch

from srmcr.errors import ConfigError
from srmcr.module import SRMCRModule
from srmcr.reward import SelfReward
from srmcr.reward_functions import Records, RewardFunctionArgs, as_scores
from tests.cues.fakes import make_rollout

HERE = "tests.test_reward_functions"
NAN = math.nan
CALLS: list[dict] = []  # what the recording function was called with


def length(prompts, completions, **fields):
    """The completion's length in characters: easy to compute by hand."""
    return [float(len(c)) for c in completions]


def recording(prompts, completions, **fields):
    CALLS.append({"prompts": prompts, "completions": completions, **fields})
    return [0.0] * len(completions)


def abstaining(prompts, completions, **fields):
    return [None, 1.0, NAN, 0.0]


def _args(name: str, **kwargs) -> RewardFunctionArgs:
    return RewardFunctionArgs(path=f"{HERE}:{name}", **kwargs)


def _rollout(texts, group_size=2):
    return make_rollout([f"question {i // group_size}" for i in range(len(texts))], texts,
                        group_size=group_size)


# Well-formed, so the format gate stays out of the figures.
TEXTS = [f"<think>{'x' * n}</think><answer>1</answer>" for n in (1, 3, 2, 2)]


def test_a_function_alone_is_the_reward():
    reward = SelfReward(cues=[], functions=[_args("length")])
    out = reward(_rollout(TEXTS))
    lengths = [len(t) for t in TEXTS]  # 31, 33, 32, 32
    assert reward.names == ["length"] and out.scores[:, 0].tolist() == lengths
    assert out.stats["reward_raw"] == pytest.approx(sum(lengths) / 4)
    assert out.stats["reward/length"] == pytest.approx(sum(lengths) / 4)
    # Group-normalized: (31, 33) -> (-1, 1); (32, 32) has no spread -> 0.
    assert out.rewards.tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-5)


def test_its_weight_is_its_prior_beside_the_cues():
    reward = SelfReward(cues=["lexical_fidelity"], functions=[_args("length", weight=3.0)],
                        reliability=False)
    out = reward(_rollout(TEXTS))
    assert reward.names == ["lexical_fidelity", "length"]
    assert out.stats["weight/length"] == pytest.approx(0.75)
    assert out.stats["weight/lexical_fidelity"] == pytest.approx(0.25)


def test_reliability_applies_to_it_and_it_can_anchor():
    reward = SelfReward(cues=["lexical_fidelity", "non_redundancy"],
                        functions=[_args("length")], anchor="length")
    reward.combine(torch.tensor([[0.2, 0.9, 1.0], [0.8, 0.1, 3.0]]), torch.ones(2), 2)
    # lexical fidelity rises with the anchor (corr 1), non-redundancy falls (corr -1).
    assert reward.reliability_ema.tolist() == pytest.approx([1.0, -1.0, 1.0])
    assert reward.weights()[1] == pytest.approx(0.05)  # the floor


def test_none_and_nan_abstain():
    out = SelfReward(cues=[], functions=[_args("abstaining")])(_rollout(TEXTS))
    assert out.scores[:, 0].isnan().tolist() == [True, False, True, False]
    assert out.stats["abstain/abstaining"] == 2
    # An abstention takes its group's mean: each group is then flat, z = 0.
    assert out.rewards.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_it_gets_the_questions_the_completions_and_the_record_fields_not_the_labels():
    CALLS.clear()
    reward = SelfReward(cues=[], functions=[_args("recording")])
    rollout = make_rollout(["q0", "q0", "q1", "q1"], TEXTS, group_size=2)
    reward(rollout, records=Records(sources=["a.jsonl:1", "a.jsonl:2"], answers=["3", "4"]))
    (call,) = CALLS
    assert call["prompts"] == ["q0", "q0", "q1", "q1"] and call["completions"] == TEXTS
    assert call["id"] == rollout.ids and "answer" not in call
    assert call["source"] == ["a.jsonl:1", "a.jsonl:1", "a.jsonl:2", "a.jsonl:2"]


def test_labels_only_when_its_entry_says_so_and_the_run_says_it_trains_on_them(caplog):
    CALLS.clear()
    with caplog.at_level(logging.WARNING, logger="srmcr.reward_functions"):
        reward = SelfReward(cues=[], functions=[_args("recording", uses_labels=True)])
    assert "TRAINS ON LABELS" in caplog.text and "not label-free" in caplog.text
    assert reward.uses_labels and not SelfReward(cues=[], functions=[_args("length")]).uses_labels
    reward(_rollout(TEXTS), records=Records(sources=["s0", "s1"], answers=["3", None]))
    assert CALLS[0]["answer"] == ["3", "3", None, None]
    with pytest.raises(ValueError, match="uses labels: pass Records with the answers"):
        reward(_rollout(TEXTS), records=Records(sources=["s0", "s1"]))


def test_the_module_hands_the_labels_only_to_a_reward_that_uses_them():
    batch = SimpleNamespace(questions=["q0", "q1", "q2"], answers=["3", None, "red"],
                            sources=["s0", "s1", "s2"])
    blind = SRMCRModule(reward=SelfReward(cues=[], functions=[_args("length")]))
    assert blind.records(batch) == Records(["s0", "s1", "s2"], None)
    oracle = SRMCRModule(reward=SelfReward(cues=[], functions=[_args("length",
                                                                     uses_labels=True)]))
    assert oracle.records(batch, rows=[0, 2]) == Records(["s0", "s2"], ["3", "red"])


BAD_VALUES = [  # return value, error, reason
    ([1.0, 2.0, 3.0], "returned 3 values for 4 completions", "one value short"),
    ([1.0, "2", 3.0, 4.0], r"returned '2' for completion 1 \(record 1\): return a number",
     "a string is not a number"),
    ([1.0, 2.0, math.inf, 4.0], r"returned inf for completion 2 .*must be finite",
     "infinity is not a reward"),
    (0.5, "returned a float: return a list of 4 numbers", "a scalar, not one per completion"),
    ("1234", "returned a str", "a string is not a list"),
]


@pytest.mark.parametrize(("values", "error", "reason"), BAD_VALUES, ids=[c[2] for c in BAD_VALUES])
def test_bad_values_end_in_one_line_that_names_the_function(values, error, reason):
    with pytest.raises(ConfigError, match=f"^reward function mypkg:fn {error}") as raised:
        as_scores(values, 4, "mypkg:fn", ["0", "1", "2", "3"])
    assert "\n" not in str(raised.value)


def test_tensors_and_arrays_are_lists_of_numbers():
    import numpy as np

    assert as_scores(torch.tensor([1, 0]), 2, "f", "ab").tolist() == [1.0, 0.0]
    assert as_scores(np.array([0.5, np.nan]), 2, "f", "ab")[1].isnan()
    assert as_scores([True, False], 2, "f", "ab").tolist() == [1.0, 0.0]


BAD_CONFIGS = [  # functions, cues, error, reason
    ([RewardFunctionArgs(f"{HERE}.length")], [], r"functions\[0\].path='tests.*': write it as "
     "'module:function'", "a dotted path without the colon"),
    ([RewardFunctionArgs("no_such_module_xyz:fn")], [], "cannot import 'no_such_module_xyz'",
     "a module that does not exist"),
    ([_args("missing")], [], "has no callable 'missing'", "a name the module lacks"),
    ([_args("length"), _args("length")], [], "the name 'length' is taken",
     "two columns of one name"),
    ([_args("length", weight=0.0)], [], r"weight=0.0: set a finite weight > 0", "weight 0"),
    ([], [], "reward.cues is empty and reward.functions gives no function", "no column at all"),
]


@pytest.mark.parametrize(("functions", "cues", "error", "reason"), BAD_CONFIGS,
                         ids=[c[3] for c in BAD_CONFIGS])
def test_config_mistakes_are_config_errors(functions, cues, error, reason):
    with pytest.raises(ConfigError, match=error):
        SelfReward(cues=cues, functions=functions)


def test_a_function_cannot_take_a_cue_s_name(monkeypatch):
    import tests.test_reward_functions as here
    monkeypatch.setattr(here, "lexical_fidelity", length, raising=False)
    with pytest.raises(ConfigError, match="the name 'lexical_fidelity' is taken"):
        SelfReward(cues=[], functions=[_args("lexical_fidelity")])
