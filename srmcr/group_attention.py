"""Decoding that reads each prompt's keys and values once for the G rows of its group.

After the shared prefill (``rollout._shared_prefill``) the G rows of a prompt hold identical
keys and values for its tokens. Repeated per row, every new token would read G copies of them:
hundreds of image tokens per prompt on a real model. Here the generation cache keeps the
prompt's part once per group (``GroupCacheLayer``: B rows) and each row's own generated tokens
apart (N = B*G rows, laid out by group), and ``group_attention`` scores the G rows' queries
against their prompt's keys in one product per group and key head, scores each row against its
own keys, and takes one softmax over both parts: the two partial attentions merged through
their common maximum and normaliser, which is exactly the attention over the repeated cache,
to float rounding. Grouped-query attention comes for free: a key head's query heads are more
rows of the same product.

The attention is registered with transformers (``AttentionInterface``) under ``NAME`` and used
only inside ``group_decoding``: every other forward (the prefill, the reference, log-prob and
loss passes) keeps the model's own attention implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from srmcr.prefix import language_core

NAME = "srmcr_group_decoding"


def group_slots(counts: Tensor, width: int) -> Tensor | None:
    """Each row's slot in a layout of ``width`` slots per group (None: every group is full, the
    rows are the slots). A generation chunk may cut a group: its rows fill the first slots."""
    if bool((counts == width).all()):
        return None
    starts = torch.arange(len(counts), device=counts.device) * width
    first = torch.cumsum(counts, 0) - counts  # each group's first row
    rows = torch.arange(int(counts.sum()), device=counts.device)
    group = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    return starts[group] + rows - first[group]


def group_attention(query: Tensor, prompt_keys: Tensor, prompt_values: Tensor, own_keys: Tensor,
                    own_values: Tensor, mask: Tensor | None, scale: float,
                    slots: Tensor | None = None) -> Tensor:
    """Attention of each row over its prompt's keys and its own, in SDPA's output layout.

    query (N, H, q, D); prompt_keys/values (B, h, S, D), once per group; own_keys/values
    (B*W, h, T, D), W slots per group, slot b*W + g holding row g of group b; ``mask``
    (N, 1, q, S + T) bool, True where a row may attend (None: nothing hidden, a single query);
    ``slots`` (N,) each row's slot (None: the rows are the slots). Returns (N, q, H, D) in the
    query's dtype, computed in the keys' dtype. Query head j reads key head j // (H / h), as
    ``repeat_kv`` has it.
    """
    (N, H, q, D), (B, h, S, _), T = query.shape, prompt_keys.shape, own_keys.shape[-2]
    W, rep = own_keys.shape[0] // B, H // h
    L = S + T
    if mask is None and q > 1:
        raise ValueError("several queries need a causal mask")
    rows = (query.to(prompt_keys.dtype) * scale).reshape(N, h, rep * q, D)
    if slots is not None:  # empty slots get zero queries and no mask: their outputs are dropped
        rows = rows.new_zeros(B * W, h, rep * q, D).index_copy_(0, slots, rows)
        if mask is not None:
            mask = mask.new_ones(B * W, 1, q, L).index_copy_(0, slots, mask)
    # The G rows of a group against their prompt's keys: one product per group and key head.
    grouped = rows.view(B, W, h, rep * q, D).transpose(1, 2).reshape(B, h, W * rep * q, D)
    on_prompt = torch.matmul(grouped, prompt_keys.transpose(-1, -2))  # (B, h, W*rep*q, S)
    on_own = torch.matmul(rows, own_keys.transpose(-1, -2))  # (B*W, h, rep*q, T)
    scores = torch.cat([on_prompt.view(B, h, W, rep * q, S).transpose(1, 2),
                        on_own.view(B, W, h, rep * q, T)], dim=-1)  # (B, W, h, rep*q, L)
    if mask is not None:
        scores.view(B, W, h, rep, q, L).masked_fill_(~mask.reshape(B, W, 1, 1, q, L), float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # one maximum and normaliser over both parts
    out = torch.matmul(weights[..., :S].transpose(1, 2).reshape(B, h, W * rep * q, S),
                       prompt_values).view(B, h, W, rep * q, D).transpose(1, 2)
    out = torch.matmul(weights[..., S:].reshape(B * W, h, rep * q, T), own_values).view(
        B, W, h, rep * q, D) + out
    out = out.view(B * W, h, rep, q, D).permute(0, 3, 1, 2, 4).reshape(B * W, q, H, D)
    if slots is not None:
        out = out.index_select(0, slots)
    return out.to(query.dtype)


class GroupCacheLayer(DynamicLayer):
    """A generation cache layer: the prompt's keys and values once per group, (B, h, S, D), and
    each row's generated ones in buffers reserved for the whole generation, (B*W, h, capacity,
    D), W slots per group (``group_slots``). Half-precision keys and values are kept in float32,
    and attention runs in float32 there, as SDPA's kernels accumulate.

    ``update`` writes a step's keys and values and returns the rows' parts written so far: only
    ``group_attention`` reads them, with the prompt part."""

    def __init__(self, keys: Tensor, values: Tensor, counts: Tensor, capacity: int) -> None:
        super().__init__()
        dtype = torch.float32 if keys.dtype in (torch.float16, torch.bfloat16) else keys.dtype
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.prompt_keys, self.prompt_values = keys.to(dtype), values.to(dtype)
        B, h, _, D = keys.shape
        self.width = int(counts.max())
        self.slots = group_slots(counts, self.width)
        self._keys = keys.new_zeros(B * self.width, h, capacity, D, dtype=dtype)
        self._values = values.new_zeros(B * self.width, h, capacity, values.shape[-1],
                                        dtype=dtype)
        self.length = 0
        self.keys, self.values = self._keys[:, :, :0], self._values[:, :, :0]

    def _slotted(self, states: Tensor) -> Tensor:  # (N, h, q, D) -> (B*W, h, q, D)
        if self.slots is None:
            return states
        return states.new_zeros(self._keys.shape[0], *states.shape[1:]).index_copy_(
            0, self.slots, states)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:  # past the reservation: twice the room
            grow = (0, 0, 0, 2 * end - self._keys.shape[-2])
            self._keys = torch.nn.functional.pad(self._keys, grow)
            self._values = torch.nn.functional.pad(self._values, grow)
        self._keys[:, :, self.length:end] = self._slotted(key_states)
        self._values[:, :, self.length:end] = self._slotted(value_states)
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def attend(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None,
               scale: float) -> Tensor:
        return group_attention(query, self.prompt_keys, self.prompt_values, keys, values, mask,
                               scale, self.slots)

    def get_seq_length(self) -> int:
        return self.prompt_keys.shape[-2] + self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def _unsupported(self, *args, **kwargs) -> None:
        raise NotImplementedError("a grouped generation cache keeps its rows in order: no crop, "
                                  "reorder or row selection (beam search, assisted decoding)")

    crop = reorder_cache = batch_select_indices = batch_repeat_interleave = _unsupported


def group_cache(cache: Cache, counts: Tensor, capacity: int) -> Cache:
    """The generation cache after a prefill of each prompt once (``cache``, B rows) for its
    ``counts`` rows, with room for ``capacity`` more positions per row."""
    return Cache(layers=[GroupCacheLayer(layer.keys, layer.values, counts, capacity)
                         for layer in cache.layers])


def _attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
               dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention-function signature, for the text layers bound by
    ``group_decoding``."""
    layer = getattr(module, "group_cache", None)
    if layer is None or dropout:
        raise RuntimeError(f"{NAME} runs only inside group_decoding (in eval mode)")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return layer.attend(query, key, value, attention_mask, scale), None


AttentionInterface.register(NAME, _attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # boolean masks, True where attended


def decoder_layers(model):
    """The text decoder layers of a Qwen-VL model, through PEFT's wrappers."""
    return language_core(model).language_model.layers


def supports_group_decoding(model) -> bool:
    """Whether every text layer attends to the whole sequence (no sliding window)."""
    return all(layer.self_attn.sliding_window is None for layer in decoder_layers(model))


@contextmanager
def group_decoding(model, cache: Cache) -> Iterator[None]:
    """Inside: the text layers attend with ``group_attention`` over ``cache``'s
    ``GroupCacheLayer``s; the model's own attention implementation comes back on exit."""
    layers = decoder_layers(model)
    if len(layers) != len(cache.layers):
        raise ValueError(f"{len(cache.layers)} cache layers for {len(layers)} decoder layers")
    config = layers[0].self_attn.config
    before = config._attn_implementation
    for layer, cached in zip(layers, cache.layers):
        layer.self_attn.group_cache = cached
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
        for layer in layers:
            del layer.self_attn.group_cache
