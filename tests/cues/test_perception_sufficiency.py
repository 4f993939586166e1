"""perception_sufficiency = 1 where the policy, shown only the reasoning, gives the same answer."""

import math

import pytest

from srmcr.cues import CUE_NAMES, CueInputs
from srmcr.cues.perception_sufficiency import (
    ANSWER_TOKENS,
    SYSTEM_PROMPT,
    PerceptionSufficiency,
    blind_answer,
    perception_sufficiency,
)
from srmcr.policy_view import PolicyView
from srmcr.reward import SelfReward
from srmcr.rollout import SamplingArgs
from tests.cues.fakes import make_rollout
from tests.fixtures import QUESTIONS, tiny_policy

NAN = math.nan

CASES = [  # own answer, blind answer, expected, reason
    ("3", "3", 1.0, "same answer"),
    ("3", "4", 0.0, "different answer"),
    ("Three circles", "3 circle.", 1.0, "normalized before comparing"),
    ("Yes", "yes!", 1.0, "case and punctuation ignored"),
    ("3", None, 0.0, "no blind answer: the reasoning did not suffice"),
    ("3", "", 0.0, "empty blind answer"),
    (None, "3", 0.0, "no own answer: 0, never neutral"),
    ("", "3", 0.0, "empty own answer: 0, never neutral"),
]


@pytest.mark.parametrize(("own", "blind", "expected", "reason"), CASES,
                         ids=[c[3] for c in CASES])
def test_values(own, blind, expected, reason):
    got = perception_sufficiency([own], [blind]).item()
    assert got == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize(("reply", "answer"), [
    ("<answer>4</answer>", "4"), ("<think>x</think><answer> red </answer>", "red"),
    ("  blue \n", "blue"),
])
def test_blind_answer_prefers_the_answer_block(reply, answer):
    assert blind_answer(reply) == answer


class CountingView:
    """Answers ``replies`` in order; records every call (one per step is the contract)."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def generate_without_image(self, user_texts, system_prompt, max_new_tokens):
        self.calls.append((list(user_texts), system_prompt, max_new_tokens))
        return self.replies[:len(user_texts)]


def _rollout(answers, group_size=2):
    texts = [f"<think>Step 1: I see {i} red circles here.</think>"
             + ("" if a is None else f"<answer>{a}</answer>") for i, a in enumerate(answers)]
    return make_rollout([f"question {i // group_size}" for i in range(len(texts))], texts,
                        group_size=group_size)


def test_one_batched_call_per_step_for_the_answered_completions_only():
    view = CountingView(["<answer>3</answer>", "4", "<answer>7</answer>"])
    scores = PerceptionSufficiency().score(_rollout(["3", None, "5", "7"]), policy=view)
    assert scores.tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0], nan_ok=True)
    assert len(view.calls) == 1
    texts, system, tokens = view.calls[0]
    assert system == SYSTEM_PROMPT and tokens == ANSWER_TOKENS
    assert texts == [f"Description: I see {i} red circles here.\n\nQuestion: question {i // 2}"
                     for i in (0, 2, 3)]  # the reasoning and the question; never the answer


def test_no_answer_no_call_and_no_policy_is_an_error():
    view = CountingView([])
    assert (PerceptionSufficiency().score(_rollout([None, None]), policy=view) == 0).all()
    assert view.calls == []
    reward = SelfReward(cues=["perception_sufficiency"])
    with pytest.raises(ValueError, match="perception_sufficiency needs CueInputs.policy"):
        reward(_rollout(["3", "4"]))


def test_metric_accumulates_like_the_function():
    metric = PerceptionSufficiency()
    metric.update(metric.score(_rollout(["3", "4"]), policy=CountingView(["3", "3"])))
    metric.update(metric.score(_rollout(["5", None]), policy=CountingView(["5"])))
    expected = perception_sufficiency(["3", "4", "5", None], ["3", "3", "5", None])
    assert metric.compute().item() == pytest.approx(expected.nanmean().item())


def test_reward_needs_the_policy_only_when_configured():
    assert "perception_sufficiency" not in CUE_NAMES and "policy" not in SelfReward().needs
    reward = SelfReward(cues=["perception_sufficiency", "lexical_fidelity"])
    assert reward.needs == {"policy"} and PerceptionSufficiency.needs == ("policy",)
    view = CountingView(["<answer>3</answer>", "4"])
    out = reward(_rollout(["3", "3"]), CueInputs(policy=view))
    assert out.scores[:, 0].tolist() == [1.0, 0.0] and len(view.calls) == 1


def test_policy_view_answers_text_only_in_one_generate_call():
    model, processor = tiny_policy()
    model.train()
    calls = []
    generate = model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    model.generate = counting_generate
    view = PolicyView(model, processor, SamplingArgs(max_new_tokens=8), micro_batch_size=2)
    texts = [f"Description: step {i}\n\nQuestion: {QUESTIONS[i % 2]}" for i in range(5)]
    replies = view.generate_without_image(texts, SYSTEM_PROMPT, 4)
    assert len(replies) == 5 and all(isinstance(r, str) for r in replies)
    assert len(calls) == 1 and "pixel_values" not in calls[0]  # batched, and no image
    assert calls[0]["generation_config"].do_sample is False
    assert calls[0]["generation_config"].max_new_tokens == 4
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not (calls[0]["input_ids"] == image_pad).any()
    assert model.training  # the mode is restored after generating
    assert view.generate_without_image(texts, SYSTEM_PROMPT, 4) == replies  # greedy
    assert view.generate_without_image([], SYSTEM_PROMPT, 4) == [] and len(calls) == 2
