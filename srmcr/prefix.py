"""Running each prompt once for the G completions of its group.

A rollout's G rows of one prompt share the prompt's tokens (on the shapes world ~170 of ~220
per row) and its image. Instead of G copies through the vision tower and the decoder, the
prompt runs once: in generation (the prefill, then ``srmcr.group_attention`` reads its keys and
values once per group at every new token) and in every log-prob and loss pass, where its keys
and values are repeated for the G rows. Exact up to float rounding, gradients included.

Under gradient checkpointing transformers drops the cache inside checkpointed layers (a layer
that writes it would write again when backward recomputes it). The loss pass keeps it there
(``cache_through_checkpoints``) with caches that a recomputation cannot change: the prompt's
forward records each layer's keys and values once (``PromptRecord``), the completions' forward
only reads them (``SharedPrefix``). Both forwards stay checkpointed, and the gradient of the
recorded keys and values reaches the prompt's layers through the autograd graph, as without
checkpointing (non-reentrant checkpointing: the reentrant kind replays a layer with its
explicit inputs only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer


def prompt_groups(rows: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """For consecutive row indices: the distinct prompts (in order), how many rows each has,
    and the position of each prompt's first row among ``rows``."""
    prompts, counts = torch.unique_consecutive(rows // group_size, return_counts=True)
    return prompts, counts, torch.cumsum(counts, 0) - counts


class PromptRecord(DynamicLayer):
    """A cache layer for the prompt's forward: keeps the first keys and values written into it
    and returns every write as it is. A recomputation in backward then attends to its own keys,
    not to the prompt twice, and leaves the record as the completions read it."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states


def prompt_record() -> Cache:
    return Cache(layer_class_to_replicate=PromptRecord)


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


def repeated(cache: Cache, counts: Tensor) -> Cache:
    """``cache`` with each batch row repeated ``counts`` times (differentiable), read-only
    (``SharedPrefix``), for the teacher-forced passes. Generation reads the prompt part once per
    group instead (``srmcr.group_attention``)."""
    return Cache(layers=[SharedPrefix(layer.keys.repeat_interleave(counts, dim=0),
                                      layer.values.repeat_interleave(counts, dim=0))
                         for layer in cache.layers])


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


def output_head(model):
    """The ``lm_head`` through PEFT's wrappers."""
    return _unwrapped(model).lm_head


def checkpointing(model) -> bool:
    return bool(getattr(_unwrapped(model), "is_activation_checkpointing", False))


def _checkpointed_layers(model) -> list[GradientCheckpointingLayer]:
    return [m for m in language_core(model).language_model.layers
            if isinstance(m, GradientCheckpointingLayer)]


def shares_under_checkpointing(model) -> bool:
    """Whether a training-mode forward may share prompts: the model is not checkpointed, or is
    checkpointed the non-reentrant way (the reentrant kind would give a shared prompt no
    gradient) by a transformers whose checkpointed layers can keep a cache
    (``_can_checkpoint_with_cache``; without it they would drop it, silently)."""
    if not checkpointing(model):
        return True
    if not hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache"):
        return False
    funcs = [getattr(m, "_gradient_checkpointing_func", None) for m in _checkpointed_layers(model)]
    return not any(getattr(f, "keywords", {}).get("use_reentrant", False) for f in funcs)


@contextmanager
def cache_through_checkpoints(model) -> Iterator[None]:
    """Checkpointed decoder layers keep the cache they are given (transformers' own switch,
    meant for layers that only read it). Only for ``PromptRecord`` and ``SharedPrefix``, which
    a recomputation leaves as they were."""
    layers = _checkpointed_layers(model)
    before = [vars(layer).get("_can_checkpoint_with_cache") for layer in layers]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer, value in zip(layers, before):
            if value is None:
                del layer._can_checkpoint_with_cache  # back to the class's False
            else:
                layer._can_checkpoint_with_cache = value
