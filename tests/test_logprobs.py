"""Per-token log-probs: hand-computed maths, micro-batching, and agreement with the sampler."""

import dataclasses
import math

import pytest
import torch

from srmcr.logprobs import (
    blank_pixel_values,
    completion_logits,
    rollout_logprobs,
    token_logprobs,
)
from srmcr.rollout import SamplingArgs
from tests.fixtures import (
    GRIDS,
    MEAN_COLOURS,
    randomize_lora,
    sample_with_logits,
    tiny_policy,
)

TEMPERATURE = 1.5


def test_token_logprobs_by_hand():
    # Row 0: logits ln[1, 2, 5] -> p = [1, 2, 5] / 8. Row 1: logits [0, ln 3, 0] -> [1, 3, 1] / 5.
    logits = torch.log(torch.tensor([[[1.0, 2.0, 5.0], [1.0, 3.0, 1.0]]]))  # (1, 2, 3)
    ids = torch.tensor([[2, 0]])
    expected = torch.tensor([[math.log(5 / 8), math.log(1 / 5)]])
    torch.testing.assert_close(token_logprobs(logits, ids), expected)
    # T = 0.5 doubles the logits: ln[1, 4, 25] -> p = [1, 4, 25] / 30;
    # ln[1, 9, 1] -> p = [1, 9, 1] / 11.
    expected_cold = torch.tensor([[math.log(25 / 30), math.log(1 / 11)]])
    torch.testing.assert_close(token_logprobs(logits, ids, temperature=0.5), expected_cold)
    # T = 2 halves them: sqrt -> [1, √2, √5] / (1 + √2 + √5).
    hot = token_logprobs(logits, torch.tensor([[1, 1]]), temperature=2.0)
    torch.testing.assert_close(hot[0, 0],
                               torch.tensor(math.log(2**0.5 / (1 + 2**0.5 + 5**0.5))))
    torch.testing.assert_close(hot[0, 1], torch.tensor(math.log(math.sqrt(3) / (2 + 3**0.5))))


@pytest.fixture(scope="module")
def policy():
    model, processor = tiny_policy()
    randomize_lora(model)  # the adapter must take part in both the sampler and the loss forward
    return model, processor


@pytest.fixture(scope="module")
def sampled(policy):
    """2 prompts x 3 (images of different sizes, chunks of 4 + 2), with generate's raw logits."""
    model, processor = policy
    args = SamplingArgs(group_size=3, max_new_tokens=24, generation_batch_size=4)
    # A bonus on <|im_end|> so that some rows end early and others run to max_new_tokens.
    return sample_with_logits(model, processor, args, TEMPERATURE, end_bonus=3.0)


@pytest.fixture(scope="module")
def logprobs(policy, sampled):
    return rollout_logprobs(policy[0], sampled[0], micro_batch_size=6, max_prob=True)


def test_training_forward_reproduces_the_sampler(sampled, logprobs):
    # The training forward (whole sequence, left padding, mm_token_type_ids, logits_to_keep) must
    # give the sampler's own log-probs (KV cache, decode-time rope positions) on every kept token.
    rollout, raw = sampled
    mask = rollout.completion_mask.bool()
    ids = rollout.completion_ids.unsqueeze(-1)
    # At T = 1 both exclude the suppressed tokens (grounding compares them with the blank pass).
    suppressed = torch.tensor(rollout.suppressed)
    sampler_t1 = torch.log_softmax(raw.index_fill(-1, suppressed, float("-inf")), -1)
    sampler_t1 = sampler_t1.gather(-1, ids).squeeze(-1)
    sampler_t = torch.log_softmax(raw / TEMPERATURE, -1).gather(-1, ids).squeeze(-1)
    assert mask.sum() >= 40 and rollout.truncated.any() and not rollout.truncated.all()
    torch.testing.assert_close(logprobs.logp_t1[mask], sampler_t1[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(logprobs.logp[mask], sampler_t[mask], atol=1e-4, rtol=0)
    assert (logprobs.logp - logprobs.logp_t1)[mask].abs().max() > 1e-2  # T = 1.5 does matter


def test_micro_batches_give_the_same_logprobs(policy, sampled, logprobs):
    # Micro-batches of 1 and of 4 (not dividing N = 6) must pick each row's own image patches.
    for micro in (1, 4):
        other = rollout_logprobs(policy[0], sampled[0], micro_batch_size=micro, max_prob=True)
        for a, b in ((other.logp, logprobs.logp), (other.logp_t1, logprobs.logp_t1),
                     (other.max_prob, logprobs.max_prob)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_logp_at_temperature_one_equals_logp_t1_up_to_the_suppressed_tokens(policy, sampled):
    rollout = dataclasses.replace(sampled[0], temperature=1.0, suppressed=[])
    out = rollout_logprobs(policy[0], rollout, micro_batch_size=6)
    torch.testing.assert_close(out.logp, out.logp_t1, atol=0, rtol=0)
    # Excluding the suppressed tokens renormalizes over fewer tokens: every log-prob rises.
    suppressed = rollout_logprobs(policy[0], sampled[0], micro_batch_size=6, at_temperature=False)
    assert (suppressed.logp_t1 > out.logp_t1).all()


def test_each_pass_computes_only_what_it_is_asked_for(policy, sampled, logprobs):
    # The reference pass (log-probs at the temperature and at T = 1) and the blank-image pass
    # (T = 1 only) need no max probability: the sampler recorded the rollout's confidence.
    model, rollout = policy[0], sampled[0]
    reference = rollout_logprobs(model, rollout, 6)
    assert reference.max_prob is None
    assert torch.equal(reference.logp, logprobs.logp)
    assert torch.equal(reference.logp_t1, logprobs.logp_t1)
    blank = rollout_logprobs(model, rollout, 6, at_temperature=False)
    assert blank.logp is None and blank.max_prob is None
    assert torch.equal(blank.logp_t1, logprobs.logp_t1)


def test_max_prob_bounds_the_token_prob(logprobs):
    chosen = logprobs.logp_t1.exp()
    assert logprobs.max_prob.shape == chosen.shape == (6, logprobs.logp.shape[1])
    assert (logprobs.max_prob >= chosen - 1e-6).all()
    assert (logprobs.max_prob <= 1 + 1e-6).all() and (logprobs.max_prob >= 1 / 640).all()


def test_completion_logits_shape_and_gradient(policy, sampled):
    model, rollout = policy[0], sampled[0]
    logits = completion_logits(model, rollout, slice(1, 4))
    assert logits.shape == (3, rollout.completion_ids.shape[1], 640)
    assert logits.dtype == torch.float32
    logits.logsumexp(-1).mean().backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    model.zero_grad(set_to_none=True)


def test_blank_pixel_values_keep_grid_and_are_uniform(policy, sampled):
    processor, rollout = policy[1], sampled[0]
    blank = blank_pixel_values(processor, rollout)
    assert blank.shape == rollout.pixel_values.shape == (64 + 96, 1176)
    assert rollout.image_grid_thw.tolist() == GRIDS
    ip = processor.image_processor
    for rows, colour in zip(blank.split([64, 96]), MEAN_COLOURS):
        assert (rows == rows[0]).all()  # one uniform image: every patch row is equal
        # A row is channel-major (3 x 2 frames x 14 x 14): each channel is one normalized value.
        expected = [(c / 255 - m) / s for c, m, s in zip(colour, ip.image_mean, ip.image_std)]
        channels = rows[0].view(3, 392)
        assert (channels == channels[:, :1]).all()
        torch.testing.assert_close(channels[:, 0], torch.tensor(expected), atol=1e-5, rtol=0)
    assert not torch.equal(blank, rollout.pixel_values)  # the originals are two-coloured


def test_blank_image_changes_the_logprobs(policy, sampled, logprobs):
    model, processor = policy
    rollout = sampled[0]
    blank = rollout_logprobs(model, rollout, 6, blank_pixel_values(processor, rollout))
    mask = rollout.completion_mask.bool()
    assert (blank.logp_t1 - logprobs.logp_t1)[mask].abs().max() > 1e-3


def test_sampler_records_the_teacher_forced_t1_logprobs_and_confidence(policy, sampled):
    # rollout.logp / max_prob come from the logits the sampler drew from (no extra forward); the
    # blank-image pass must be comparable token by token, so the teacher-forced T=1 values
    # (suppressed tokens excluded, as in the sampler) must equal them.
    rollout, _ = sampled
    ref = rollout_logprobs(policy[0], rollout, micro_batch_size=4, at_temperature=False,
                           max_prob=True)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(rollout.logp[mask], ref.logp_t1[mask], rtol=0, atol=1e-4)
    torch.testing.assert_close(rollout.max_prob[mask], ref.max_prob[mask], rtol=0, atol=1e-5)
    assert (rollout.logp[~mask] == 0).all() and (rollout.max_prob[~mask] == 0).all()


@pytest.mark.parametrize("rows", [slice(None), slice(1, 5), slice(2, 4), slice(4, 5)],
                         ids=["all", "across-groups", "group-boundary", "one-row"])
def test_shared_prompt_gives_the_unshared_logits(policy, sampled, rows):
    # The prompts (two lengths: the shorter is left-padded) run once, the completions on their
    # repeated keys and values; mrope positions and padding must come out as in whole rows.
    model, rollout = policy[0], sampled[0]
    assert rollout.prompt_mask.sum(1).unique().numel() == 2
    with torch.no_grad():
        whole = completion_logits(model, rollout, rows, share_prompt=False)
        shared = completion_logits(model, rollout, rows, share_prompt=True)
    mask = rollout.completion_mask[rows].bool()
    torch.testing.assert_close(shared[mask], whole[mask], atol=1e-5, rtol=0)


def test_shared_prompt_gives_the_unshared_gradients(policy, sampled):
    # The gradient of every row flows into its prompt's shared activations.
    model, rollout = policy[0], sampled[0]
    weights = torch.linspace(-1, 1, rollout.completion_ids.numel()).view_as(
        rollout.completion_ids) * rollout.completion_mask

    def grads(share: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logits = completion_logits(model, rollout, slice(None), share_prompt=share)
        (token_logprobs(logits, rollout.completion_ids) * weights).sum().backward()
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    whole, shared = grads(False), grads(True)
    assert whole.keys() == shared.keys() and len(whole) == 28  # every LoRA matrix
    for name in whole:
        torch.testing.assert_close(shared[name], whole[name], atol=1e-5, rtol=1e-4, msg=name)


def test_prompt_sharing_is_off_only_where_it_cannot_work(policy, sampled):
    # G = 1 within the rows; reentrant checkpointing is tests/test_prefix.py's.
    model, rollout = policy[0], sampled[0]
    calls: list[int] = []
    hook = model.get_base_model().lm_head.register_forward_hook(
        lambda m, args, out: calls.append(out.shape[1]))
    try:
        # The head runs once; on the completions' positions when shared, else on T + 1 of them.
        completion_logits(model, rollout, slice(0, 3))  # one prompt, 3 rows: shared
        assert calls == [rollout.completion_ids.shape[1]]
        calls.clear()
        completion_logits(model, rollout, slice(2, 4))
        assert len(calls) == 1  # no two rows share a prompt: whole rows
        calls.clear()
        rollout_logprobs(model, rollout, micro_batch_size=3)  # no-grad passes share too
        assert calls == [rollout.completion_ids.shape[1]] * 2
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("share", [True, False], ids=["shared", "whole-rows"])
def test_passes_reuse_the_samplers_image_features(policy, sampled, share):
    # The sampler ran each image through the frozen tower once; the later passes take that
    # output instead of running the tower again, and get the logits of a fresh tower pass. The
    # rows cover both prompts (images of two sizes): features given to the wrong prompt fail.
    model, rollout = policy[0], sampled[0]
    assert rollout.image_features is not None and len(rollout.image_features.per_image) == 2
    calls: list[int] = []
    hook = model.get_base_model().model.visual.register_forward_hook(
        lambda m, args, out: calls.append(1))
    rows = slice(1, 5)
    try:
        with torch.no_grad():
            reused = completion_logits(model, rollout, rows, share_prompt=share)
            assert not calls
            fresh = completion_logits(model, dataclasses.replace(rollout, image_features=None),
                                      rows, share_prompt=share)
            assert len(calls) == 1
            blank = blank_pixel_values(policy[1], rollout)  # other pixels: the tower runs
            completion_logits(model, rollout, rows, blank, share_prompt=share)
            assert len(calls) == 2
    finally:
        hook.remove()
    mask = rollout.completion_mask[rows].bool()
    torch.testing.assert_close(reused[mask], fresh[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("share", [True, False], ids=["shared", "whole-rows"])
def test_passes_reuse_the_samplers_rope_positions(policy, sampled, share, monkeypatch):
    # The rollout carries its sequences' mrope positions: the passes compute none of their own
    # (get_rope_index is a Python loop over every row's tokens) and give the same logits.
    model, rollout = policy[0], sampled[0]
    core = model.get_base_model().model
    calls: list[int] = []
    rope = core.get_rope_index
    monkeypatch.setattr(core, "get_rope_index", lambda *a, **k: calls.append(1) or rope(*a, **k))
    rows = slice(1, 5)
    with torch.no_grad():
        reused = completion_logits(model, rollout, rows, share_prompt=share)
        assert not calls
        fresh = completion_logits(model, dataclasses.replace(rollout, position_ids=None), rows,
                                  share_prompt=share)
        assert calls == [1]
    assert torch.equal(reused, fresh)
