"""Prompt sharing under gradient checkpointing: the loss pass runs each prompt once, both
forwards stay checkpointed, and logits and LoRA gradients equal the row-by-row computation."""

from functools import partial

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from srmcr.logprobs import completion_logits, token_logprobs
from srmcr.prefix import (
    PromptRecord,
    SharedPrefix,
    cache_through_checkpoints,
    language_core,
    shares_under_checkpointing,
)
from srmcr.rollout import SamplingArgs
from tests.fixtures import (
    needs_bnb_4bit,
    randomize_lora,
    sample_with_logits,
    tiny_policy,
)


def test_prompt_record_keeps_the_first_write_and_returns_every_write():
    # A recomputation in backward writes again: it must attend to its own keys (not the prompt
    # twice), and the completions must still read the first forward's keys.
    k1, v1, k2, v2 = (torch.full((1, 1, 2, 4), float(i)) for i in range(4))
    record = PromptRecord()
    assert record.update(k1, v1) == (k1, v1)
    assert record.update(k2, v2) == (k2, v2)
    assert record.keys is k1 and record.values is v1 and record.get_seq_length() == 2
    shared = SharedPrefix(record.keys, record.values)
    keys, values = shared.update(k2, v2)
    assert torch.equal(keys, torch.cat([k1, k2], -2))
    assert torch.equal(values, torch.cat([v1, v2], -2))
    assert shared.keys is k1  # read-only: a second read sees the same prefix


@pytest.fixture(scope="module", params=["fp32", pytest.param("4bit", marks=needs_bnb_4bit)])
def checkpointed(request):
    """A checkpointed policy in training mode, and 2 prompts x 3 completions (some end early)."""
    quantization = "4bit" if request.param == "4bit" else "none"
    model, processor = tiny_policy(gradient_checkpointing=True, quantization=quantization)
    randomize_lora(model)
    args = SamplingArgs(group_size=3, max_new_tokens=24, generation_batch_size=6)
    rollout, _ = sample_with_logits(model, processor, args, 1.5, end_bonus=3.0)
    model.train()
    return model, rollout


def test_cache_through_checkpoints_is_switched_back(checkpointed):
    layers = language_core(checkpointed[0]).language_model.layers
    assert all(isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
               for m in layers)
    with cache_through_checkpoints(checkpointed[0]):
        with cache_through_checkpoints(checkpointed[0]):
            assert all(m._can_checkpoint_with_cache for m in layers)
        assert all(m._can_checkpoint_with_cache for m in layers)  # an inner call leaves it on
    assert not any(m._can_checkpoint_with_cache or "_can_checkpoint_with_cache" in vars(m)
                   for m in layers)


def _loss_pass(model, rollout, rows: slice, share: bool):
    """Logits, LoRA gradients, and the (batch, tokens) of every run of the first decoder layer's
    first norm: in forward, and in the recomputation in backward (which stops as soon as it has
    what backward needs, so later modules may not run again)."""
    runs: list[tuple[int, int]] = []
    norm = language_core(model).language_model.layers[0].input_layernorm
    hook = norm.register_forward_hook(lambda m, args, out: runs.append(tuple(out.shape[:2])))
    ids = rollout.completion_ids[rows]
    weights = torch.linspace(-1, 1, ids.numel()).view_as(ids) * rollout.completion_mask[rows]
    model.zero_grad(set_to_none=True)
    try:
        logits = completion_logits(model, rollout, rows, share_prompt=share)
        (token_logprobs(logits, ids) * weights).sum().backward()
    finally:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads, runs


@pytest.mark.parametrize(("rows", "prompts"),
                         [(slice(None), 2), (slice(1, 5), 2), (slice(0, 3), 1)],
                         ids=["all", "across-groups", "one-group"])
def test_checkpointed_shared_loss_pass_equals_the_unshared_one(checkpointed, rows, prompts):
    model, rollout = checkpointed
    n = len(range(len(rollout))[rows])
    P, T = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    whole, whole_grads, whole_runs = _loss_pass(model, rollout, rows, share=False)
    shared, shared_grads, shared_runs = _loss_pass(model, rollout, rows, share=True)
    # Checkpointed as before (each forward recomputed once in backward), now with the prompts
    # run once and the completions on their keys and values.
    assert whole_runs == [(n, P + T)] * 2
    assert shared_runs == [(prompts, P), (n, T), (n, T), (prompts, P)]
    mask = rollout.completion_mask[rows].bool()
    assert mask.sum() >= 20
    torch.testing.assert_close(shared[mask], whole[mask], atol=1e-5, rtol=0)
    assert whole_grads.keys() == shared_grads.keys() and len(whole_grads) == 28  # every LoRA matrix
    for name in whole_grads:
        torch.testing.assert_close(shared_grads[name], whole_grads[name], atol=1e-5, rtol=1e-4,
                                   msg=name)


def test_loss_pass_shares_the_prompt_under_checkpointing_unless_it_cannot(checkpointed,
                                                                         monkeypatch):
    model, rollout = checkpointed
    width = rollout.completion_ids.shape[1]
    calls: list[int] = []
    layers = language_core(model).language_model.layers
    hook = model.get_base_model().lm_head.register_forward_hook(
        lambda m, args, out: calls.append(out.shape[1]))
    try:
        assert shares_under_checkpointing(model)
        completion_logits(model, rollout, slice(0, 3))
        assert calls == [width]  # the prompt's last position and the completions' but the last
        calls.clear()
        for layer in layers:  # as gradient_checkpointing_enable(use_reentrant=True) sets them
            layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=True)
        assert not shares_under_checkpointing(model)
        completion_logits(model, rollout, slice(0, 3))
        assert calls == [width + 1]  # whole rows: no gradient would reach a shared prompt
        model.eval()  # eval mode checkpoints nothing: shared whatever the checkpointing
        completion_logits(model, rollout, slice(0, 3))
        assert calls == [width + 1, width]
        # A transformers without the switch would drop the cache in checkpointed layers.
        monkeypatch.delattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache")
        assert not shares_under_checkpointing(model)
        monkeypatch.undo()
    finally:
        for layer in layers:
            layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        hook.remove()
        model.train()
