"""self_verification = p(Yes) / (p(Yes) + p(No)) after asking the policy to verify its answer."""

import math
from dataclasses import replace

import pytest
import torch

from srmcr.cues import CUE_NAMES
from srmcr.cues.self_verification import (
    VERIFY_QUESTION,
    WORDS,
    SelfVerification,
    self_verification,
)
from srmcr.policy_view import PolicyView
from srmcr.reward import SelfReward
from srmcr.rollout import SamplingArgs
from tests.cues.fakes import make_rollout
from tests.fixtures import sample_with_logits, tiny_policy

NAN = math.nan
CASES = [  # logit Yes, logit No, has an answer, expected, reason
    (0.0, 0.0, True, 0.5, "undecided"),
    (2.0, 0.0, True, 1 / (1 + math.exp(-2.0)), "leans Yes"),
    (-1.0, 1.0, True, 1 / (1 + math.exp(2.0)), "leans No"),
    (-3.0, -5.0, True, 1 / (1 + math.exp(-2.0)), "log-probs give the same as logits"),
    (40.0, -40.0, True, 1.0, "certain Yes, no overflow"),
    (2.0, 0.0, False, 0.0, "no answer: 0, never neutral"),
]


@pytest.mark.parametrize(("yes", "no", "answered", "expected", "reason"), CASES,
                         ids=[c[4] for c in CASES])
def test_values(yes, no, answered, expected, reason):
    got = self_verification(torch.tensor([[yes, no]]), torch.tensor([answered])).item()
    assert got == pytest.approx(expected, abs=1e-6, nan_ok=True)


class CountingView:
    """Next-token logits from a table; records every call (one per step is the contract)."""

    def __init__(self, logits):
        self.logits, self.calls = torch.tensor(logits), []

    def next_token_logits(self, rollout, follow_up, words):
        self.calls.append((len(rollout), follow_up, tuple(words)))
        return self.logits


def _rollout(answers):
    texts = ["<think>Step 1: two circles.</think>" + ("" if a is None else f"<answer>{a}</answer>")
             for a in answers]
    return make_rollout(["q"] * len(texts), texts, group_size=2)


def test_one_call_per_step_and_abstentions():
    view = CountingView([[1.0, 1.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    scores = SelfVerification().score(_rollout(["2", None, "3", ""]), policy=view)
    expected = [0.5, 0.0, 1 / (1 + math.exp(2.0)), 0.0]
    assert scores.tolist() == pytest.approx(expected, nan_ok=True)
    assert view.calls == [(4, VERIFY_QUESTION, WORDS)]


def test_no_answer_no_call_and_no_policy_is_an_error():
    view = CountingView([])
    assert (SelfVerification().score(_rollout([None, None]), policy=view) == 0).all()
    assert not view.calls
    with pytest.raises(ValueError, match="self_verification needs CueInputs.policy"):
        SelfReward(cues=["self_verification"])(_rollout(["1", "2"]))


def test_reward_needs_the_policy_only_when_configured():
    assert "self_verification" not in CUE_NAMES
    assert SelfReward(cues=["self_verification", "non_redundancy"]).needs == {"policy"}


@pytest.fixture(scope="module")
def policy_and_rollout():
    model, processor = tiny_policy()
    # Some completions end early: padding inside the completion block.
    rollout, _ = sample_with_logits(model, processor, SamplingArgs(group_size=3,
                                    max_new_tokens=6), 1.0, end_bonus=4.0)
    assert not rollout.truncated.all() and rollout.truncated.any()
    return model, processor, rollout


def test_policy_view_one_forward_per_micro_batch_with_the_image(policy_and_rollout):
    model, processor, rollout = policy_and_rollout
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs),
                                           with_kwargs=True)
    try:
        logits = PolicyView(model, processor, SamplingArgs(), micro_batch_size=4)\
            .next_token_logits(rollout, VERIFY_QUESTION, WORDS)
    finally:
        hook.remove()
    assert logits.shape == (6, 2) and logits.isfinite().all()
    assert len(calls) == 2  # 6 completions, micro-batches of 4
    assert all(c["logits_to_keep"] == 1 and c["pixel_values"] is not None for c in calls)


def test_policy_view_reads_the_next_token_after_the_follow_up_turn(policy_and_rollout):
    model, processor, rollout = policy_and_rollout
    tok = processor.tokenizer
    batched = PolicyView(model, processor, SamplingArgs(), micro_batch_size=4)\
        .next_token_logits(rollout, VERIFY_QUESTION, WORDS)
    single = PolicyView(model, processor, SamplingArgs(), micro_batch_size=1)\
        .next_token_logits(rollout, VERIFY_QUESTION, WORDS)
    assert torch.allclose(batched, single, atol=1e-4)  # padding and chunking change nothing
    # Reference, row by row, without padding or logits_to_keep: prompt, the completion without
    # its end token, then the follow-up turn in Qwen's chat format.
    suffix = tok.encode(f"<|im_end|>\n<|im_start|>user\n{VERIFY_QUESTION}<|im_end|>\n"
                        "<|im_start|>assistant\n", add_special_tokens=False)
    ends = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    word_ids = [tok.encode(w, add_special_tokens=False)[0] for w in WORDS]
    for i in range(len(rollout)):
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
        completion = [t for t, m in zip(rollout.completion_ids[i].tolist(),
                                        rollout.completion_mask[i].tolist())
                      if m and t not in ends]
        ids = torch.tensor([prompt + completion + suffix])
        mm = torch.zeros_like(ids)
        mm[0, :len(prompt)] = rollout.mm_token_type_ids[i][rollout.prompt_mask[i].bool()]
        image = i // rollout.group_size
        counts = rollout.image_grid_thw.prod(-1).tolist()
        start = sum(counts[:image])
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                        pixel_values=rollout.pixel_values[start:start + counts[image]],
                        image_grid_thw=rollout.image_grid_thw[image:image + 1], use_cache=False)
        assert torch.allclose(batched[i], out.logits[0, -1, word_ids], atol=1e-4), i


def test_policy_view_uses_the_image(policy_and_rollout):
    model, processor, rollout = policy_and_rollout
    view = PolicyView(model, processor, SamplingArgs(), micro_batch_size=6)
    seen = view.next_token_logits(rollout, VERIFY_QUESTION, WORDS)
    negated = view.next_token_logits(replace(rollout, pixel_values=-rollout.pixel_values),
                                     VERIFY_QUESTION, WORDS)
    assert not torch.allclose(seen, negated, atol=1e-5)
