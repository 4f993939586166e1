"""GRPO maths as pure tensor functions: group advantages and the clipped policy loss with KL.

Shape letters: B prompts, G completions per prompt, N = B*G sequences, T completion tokens.
Completions of one prompt are contiguous, so ``rewards.view(B, G)`` holds.

The loss is written as ``numerator / normalizer``: the numerator is a sum over the sequences it
is given, the normalizer depends only on the full batch's mask. The trainer runs the loss in
micro-batches of sequences and sums their gradients, so it passes
``normalizer=loss_normalizer(full_mask, aggregation)`` to every micro-batch; the micro-batch
losses then add up to the full-batch loss exactly, for every aggregation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Scale = Literal["group", "batch", "none"]
Aggregation = Literal["grpo", "token", "dr_grpo"]


def group_advantages(
    rewards: Tensor, group_size: int, scale: Scale = "group", eps: float = 1e-6
) -> Tensor:
    """Group-relative advantages ``(R - group mean) / (std + eps)``.

    Args:
        rewards: (N,) one reward per completion, the G completions of a prompt contiguous.
        group_size: G, at least 2 (a group of one has no baseline).
        scale: "group" divides by each group's std, "batch" by the std of all N rewards,
            "none" only centres. Stds are torch's default (unbiased).
        eps: keeps the division finite when a std is 0.

    Returns:
        (N,) advantages; exactly 0 for every member of a group whose rewards are all equal.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group needs a baseline), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    # The mean of equal floats can differ from them by one ulp: force an exact 0 for flat groups.
    flat = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (B, 1)
    centred = centred.masked_fill(flat, 0.0)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    elif scale != "none":
        raise ValueError(f"scale must be one of 'group', 'batch', 'none', got {scale!r}")
    return centred.reshape(-1)


def _sequence_means(per_token: Tensor, mask: Tensor) -> Tensor:
    """Sum over sequences of each sequence's masked token mean; empty sequences count 0."""
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).sum()


def _token_sum(per_token: Tensor, mask: Tensor) -> Tensor:
    """Sum over all masked tokens."""
    return (per_token * mask).sum()


# Numerators: sums over the sequences given, so micro-batch numerators add up. (N, T) -> ().
AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "grpo": _sequence_means,  # / number of sequences: mean of per-sequence means
    "token": _token_sum,  # / number of masked tokens (DAPO)
    "dr_grpo": _token_sum,  # / (N * T), T the padded length (Dr. GRPO)
}

# Normalizers, from the FULL batch's mask (N, T).
_NORMALIZERS: dict[str, Callable[[Tensor], float]] = {
    "grpo": lambda mask: float(mask.shape[0]),
    "token": lambda mask: max(float(mask.sum()), 1.0),  # an all-padding batch gives loss 0
    "dr_grpo": lambda mask: float(mask.shape[0] * mask.shape[1]),
}


def loss_normalizer(mask: Tensor, aggregation: Aggregation = "grpo") -> float:
    """The denominator of ``aggregation`` for the full batch's mask (N, T).

    "grpo": N sequences; "token": the number of masked tokens (at least 1); "dr_grpo": N * T.
    Pass it as ``policy_loss(..., normalizer=...)`` to every micro-batch so the micro-batch
    losses sum to the full-batch loss.
    """
    if aggregation not in _NORMALIZERS:
        raise ValueError(f"aggregation must be one of {sorted(_NORMALIZERS)}, got {aggregation!r}")
    return _NORMALIZERS[aggregation](mask)


def k3_divergence(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:  # (N, T) x 3 -> ()
    """Mean over masked tokens of k3 = exp(ref − logp) − (ref − logp) − 1 (>= 0): the KL
    estimate of the loss, here for logging at T = 1 whatever the sampling temperature."""
    keep = mask.bool()
    gap = torch.where(keep, ref_logp - logp, 0.0)
    k3 = torch.exp(gap) - gap - 1.0
    return (k3 * keep).sum() / keep.sum().clamp(min=1)


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.01,
    aggregation: Aggregation = "grpo",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate plus ``beta`` times the k3 KL estimator, aggregated over tokens.

    Per token: ``-min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A) + beta * k3`` with
    ``r = exp(logp - old_logp)`` and ``k3 = exp(ref - logp) - (ref - logp) - 1`` (>= 0).

    Args:
        logp: (N, T) log-probs of the sampled tokens under the policy being trained (with grad).
        old_logp: (N, T) log-probs under the policy that sampled them (no grad).
        ref_logp: (N, T) log-probs under the reference policy; may be None when ``beta == 0``.
        advantages: (N,) one advantage per sequence.
        mask: (N, T) 1 on completion tokens, 0 on padding; padding gets exactly zero gradient.
        clip_low, clip_high: the trust region ``[1 - clip_low, 1 + clip_high]`` of the ratio.
        beta: KL weight; 0 skips the KL term.
        aggregation: a key of ``AGGREGATIONS``: "grpo" (token mean per sequence, then mean over
            sequences), "token" (mean over all tokens), "dr_grpo" (token sum / (N * T)).
        normalizer: the denominator; default ``loss_normalizer(mask, aggregation)``. For
            micro-batches, pass the full batch's value (see the module docstring).

    Returns:
        The scalar loss and detached stats of these tokens: ``clip_frac`` (share of tokens whose
        clipped term was chosen and differs from the unclipped one) and ``kl`` (mean k3; 0 when
        ``beta == 0``).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(AGGREGATIONS)}, got {aggregation!r}")
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must share one (N, T) shape")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (N,) with N = {logp.shape[0]}, "
                         f"got {tuple(advantages.shape)}")
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp is required when beta > 0")
    keep = mask.bool()
    weight = keep.to(logp.dtype)
    # Padding positions are replaced by 0 *before* exp, so a garbage log-prob there can neither
    # overflow nor leak a NaN into the gradient (0 * inf); their gradient is exactly 0.
    log_ratio = torch.where(keep, logp - old_logp, 0.0)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (N, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if beta > 0:
        ref_gap = torch.where(keep, ref_logp - logp, 0.0)
        k3 = torch.exp(ref_gap) - ref_gap - 1.0
        per_token = per_token + beta * k3
    else:
        k3 = torch.zeros_like(logp)
    norm = loss_normalizer(mask, aggregation) if normalizer is None else float(normalizer)
    if norm <= 0:
        raise ValueError(f"normalizer must be > 0, got {norm}")
    loss = AGGREGATIONS[aggregation](per_token, weight) / norm
    n_tokens = weight.sum().clamp(min=1.0)
    stats = {
        "clip_frac": ((clipped < unclipped).to(logp.dtype) * weight).sum().detach() / n_tokens,
        "kl": (k3 * weight).sum().detach() / n_tokens,
    }
    return loss, stats
