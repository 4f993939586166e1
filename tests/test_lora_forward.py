"""plain_lora: PEFT's LoRA forward without its bookkeeping, the same outputs bit for bit; with
``merge``, one product with the merged float32 weight, the same outputs to float rounding."""

import copy
from contextlib import contextmanager

import pytest
import torch
from peft.tuners.lora import LoraLayer

import srmcr.rollout as rollout_module
from srmcr.lora_forward import _merged_forward, _plain_forward, plain_forward, plain_lora
from srmcr.rollout import SamplingArgs, sample
from tests.fixtures import QUESTIONS, randomize_lora, tiny_policy, two_images


@pytest.fixture(scope="module")
def policy():
    model, processor = tiny_policy()
    randomize_lora(model)  # a zero lora_B would hide a wrong adapter path
    model.eval()
    return model, processor


def _lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_plain_forward_is_peft_forward_bit_for_bit(policy):
    model = policy[0]
    layers = _lora_layers(model)
    assert layers and all(plain_forward(m) is not None for m in layers)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            x = torch.randn(3, 5, layer.base_layer.in_features)
            assert torch.equal(plain_forward(layer)(x), layer(x))


def test_plain_lora_swaps_every_plain_layer_and_restores_them(policy):
    model = policy[0]
    layers = _lora_layers(model)
    x = torch.randn(2, layers[0].base_layer.in_features)
    with torch.no_grad():
        peft_on = layers[0](x)
        with model.disable_adapter():
            peft_off = layers[0](x)
        with plain_lora(model) as swapped:
            assert swapped == len(layers) and all("forward" in vars(m) for m in layers)
            assert torch.equal(layers[0](x), peft_on)
            with model.disable_adapter():  # switched inside the block: PEFT's own path
                assert torch.equal(layers[0](x), peft_off)
    assert not any("forward" in vars(m) for m in layers)


def test_no_plain_forward_where_peft_does_more(policy):
    model = policy[0]
    layer = _lora_layers(model)[0]
    with model.disable_adapter():
        assert plain_forward(layer) is None
    model.train()
    try:
        layer.lora_dropout[layer.active_adapters[0]] = torch.nn.Dropout(0.5)
        assert plain_forward(layer) is None  # dropout at work
    finally:
        layer.lora_dropout[layer.active_adapters[0]] = torch.nn.Identity()
        model.eval()
    assert plain_forward(torch.nn.Linear(2, 2)) is None


def _sample_twice(policy, monkeypatch, merge: bool):
    """The same seeded sampling through plain_lora and through PEFT's own forward."""
    model, processor = policy
    args = SamplingArgs(group_size=3, max_new_tokens=12, merge_lora=merge)

    def run():
        torch.manual_seed(5)
        return sample(model, processor, two_images(), QUESTIONS, args, temperature=2.0)

    plain = run()

    @contextmanager
    def peft_only(model, merge=False):
        yield 0

    monkeypatch.setattr(rollout_module, "plain_lora", peft_only)
    return plain, run()


def test_sampling_with_plain_lora_draws_the_same_tokens(policy, monkeypatch):
    plain, peft = _sample_twice(policy, monkeypatch, merge=False)
    assert torch.equal(plain.completion_ids, peft.completion_ids)
    assert torch.equal(plain.logp, peft.logp) and torch.equal(plain.max_prob, peft.max_prob)


def test_merged_forward_is_peft_forward_to_float_rounding(policy):
    model = policy[0]
    layers = _lora_layers(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            merged = plain_forward(layer, merge=True)
            assert merged.func is _merged_forward  # float32 base and adapter: merged
            x = torch.randn(3, 5, layer.base_layer.in_features)
            expected = layer(x)
            # The adapter's share is far above the tolerance: a merge that lost it, or its
            # scaling, would fail.
            assert (expected - layer.base_layer(x)).abs().max() > 1e-2
            torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_merging_leaves_the_base_weights_untouched(policy):
    model = policy[0]
    layers = _lora_layers(model)
    before = [layer.base_layer.weight.clone() for layer in layers]
    x = torch.randn(2, layers[0].base_layer.in_features)
    with torch.no_grad():
        with model.disable_adapter():
            peft_off = layers[0](x)
        with plain_lora(model, merge=True) as swapped:
            assert swapped == len(layers)
            assert all(m.forward.func is _merged_forward for m in layers)
            with model.disable_adapter():  # switched inside the block: PEFT's own path
                assert torch.equal(layers[0](x), peft_off)
    assert not any("forward" in vars(m) for m in layers)
    assert all(torch.equal(b, layer.base_layer.weight) for b, layer in zip(before, layers))


def test_no_merge_in_half_precision_or_under_autocast(policy):
    model = policy[0]
    layers = _lora_layers(model)
    with torch.autocast("cpu", dtype=torch.bfloat16), plain_lora(model, merge=True):
        assert all(m.forward.func is _plain_forward for m in layers)
    half = copy.deepcopy(layers[0]).to(torch.bfloat16)
    assert plain_forward(half, merge=True).func is _plain_forward


def test_sampling_with_merged_lora_draws_the_same_tokens(policy, monkeypatch):
    merged, peft = _sample_twice(policy, monkeypatch, merge=True)
    assert torch.equal(merged.completion_ids, peft.completion_ids)
    torch.testing.assert_close(merged.logp, peft.logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.max_prob, peft.max_prob, rtol=1e-5, atol=1e-5)
