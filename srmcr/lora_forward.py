"""PEFT's LoRA forward without PEFT's per-call bookkeeping, where it is plain.

Sampling runs the policy once per new token, and on a small model each of those forwards is
mostly Python: every adapted projection goes through PEFT's ``Linear.forward`` (argument checks,
adapter lookups, casts) and four module calls (base layer, dropout, A, B). ``plain_lora``
replaces, for the duration of a block, the forward of every adapted projection that is a plain
case (an ``nn.Linear`` base, one active vanilla adapter, no dropout at work, adapters on and not
merged) by the same tensor operations in the same order: ``base(x) + B(A(x)) * scaling``. The
outputs are the same bit for bit; any other layer keeps PEFT's forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _plain_forward(x: Tensor, layer: nn.Module, weight: Tensor, bias: Tensor | None,
                   a: nn.Linear, b: nn.Linear, scaling: float) -> Tensor:
    """PEFT's vanilla LoRA path: ``base_layer(x) + lora_B(lora_A(x)) * scaling``."""
    if layer.disable_adapters or layer.merged:  # switched inside the block: PEFT's own path
        return type(layer).forward(layer, x)
    result = F.linear(x, weight, bias)
    lora_x = x if x.dtype == a.weight.dtype else x.to(a.weight.dtype)  # PEFT's input cast
    out = result + F.linear(F.linear(lora_x, a.weight, a.bias), b.weight, b.bias) * scaling
    return out.to(result.dtype)


def _merged_forward(x: Tensor, layer: nn.Module, merged: Tensor, bias: Tensor | None) -> Tensor:
    """The plain path with the adapter merged: ``x @ (W + B A * scaling)^T + bias``."""
    if layer.disable_adapters or layer.merged:  # switched inside the block: PEFT's own path
        return type(layer).forward(layer, x)
    return F.linear(x, merged, bias)


def plain_forward(layer: nn.Module, merge: bool = False) -> Callable[[Tensor], Tensor] | None:
    """The plain forward of a PEFT LoRA ``Linear`` right now, or None where it is not a plain
    case (another layer type, a quantized base, DoRA or another variant, several adapters,
    dropout in training mode, adapters disabled or merged). With ``merge``, where the base and
    the adapter are float32, the merged forward (its weight computed now, without a graph)."""
    base = getattr(layer, "base_layer", None)
    active = getattr(layer, "active_adapters", None)
    if type(base) is not nn.Linear or not hasattr(layer, "lora_A") or not active:
        return None
    if len(active) != 1 or layer.disable_adapters or layer.merged:
        return None
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    dropout = layer.lora_dropout[name]
    if not (isinstance(dropout, nn.Identity) or (isinstance(dropout, nn.Dropout)
                                                 and not dropout.training)):
        return None
    if not getattr(layer, "cast_input_dtype_enabled", True):
        return None
    a, b = layer.lora_A[name], layer.lora_B[name]
    if merge and base.weight.dtype == a.weight.dtype == b.weight.dtype == torch.float32:
        with torch.no_grad():
            merged = base.weight + layer.get_delta_weight(name)
        return partial(_merged_forward, layer=layer, merged=merged, bias=base.bias)
    return partial(_plain_forward, layer=layer, weight=base.weight, bias=base.bias,
                   a=a, b=b, scaling=layer.scaling[name])


@contextmanager
def plain_lora(model: nn.Module, merge: bool = False) -> Iterator[int]:
    """Inside: the plain LoRA layers of ``model`` run ``_plain_forward`` (with ``merge``, the
    float32 ones ``_merged_forward``, unless autocast is on); yields their number. The modules'
    own forwards come back on exit, and the merged weights are freed."""
    device = next(model.parameters()).device
    merge = merge and not torch.is_autocast_enabled(device.type)
    swapped = []
    for module in model.modules():
        forward = plain_forward(module, merge)
        if forward is not None and "forward" not in vars(module):
            module.forward = forward
            swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward
