"""Running each prompt once for the G completions of its group.

A rollout's G rows of one prompt share the prompt's tokens (on the shapes world ~170 of ~220
per row) and its image. Instead of G copies through the vision tower and the decoder, the
prompt runs once and its keys and values are repeated for the G rows: in generation (the
prefill) and in every log-prob and loss pass. Exact up to float rounding, gradients included.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer


def prompt_groups(rows: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """For consecutive row indices: the distinct prompts (in order), how many rows each has,
    and the position of each prompt's first row among ``rows``."""
    prompts, counts = torch.unique_consecutive(rows // group_size, return_counts=True)
    return prompts, counts, torch.cumsum(counts, 0) - counts


class SharedPrefix(DynamicLayer):
    """A cache layer that holds the prompt's keys and values, repeated over its rows, and never
    grows: a forward attends to prefix + its own tokens. Read-only, so another forward (or a
    recomputation) sees the same prefix."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values, self.is_initialized = keys, values, True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        return (torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2))


def repeated(cache: Cache, counts: Tensor, read_only: bool) -> Cache:
    """``cache`` with each batch row repeated ``counts`` times (differentiable): read-only
    (``SharedPrefix``) for teacher-forced passes, a growing ``DynamicLayer`` for generation."""
    layers = []
    for layer in cache.layers:
        keys = layer.keys.repeat_interleave(counts, dim=0)
        values = layer.values.repeat_interleave(counts, dim=0)
        if read_only:
            layers.append(SharedPrefix(keys, values))
        else:
            layers.append(DynamicLayer())
            layers[-1].update(keys, values)
    return Cache(layers=layers)


def _unwrapped(model):
    """The transformers model under PEFT's wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def language_core(model):
    """The Qwen-VL ``model.model`` (``get_rope_index``, ``rope_deltas``) through PEFT's wrappers."""
    base = _unwrapped(model)
    inner = getattr(base, "model", base)
    if not hasattr(inner, "get_rope_index"):
        raise TypeError(f"{type(base).__name__} has no get_rope_index: prompt sharing needs a "
                        "Qwen-VL model")
    return inner


def checkpointing(model) -> bool:
    return bool(getattr(_unwrapped(model), "is_activation_checkpointing", False))
