"""Visual grounding: does the image make the reasoning more likely? Self-referential, no CLIP.

Δ = mean over completion tokens of [log π(t | image) − log π(t | blank image)], the blank being
the same image filled with its mean colour; score = sigmoid(Δ / κ), κ = 0.5.

"Reasoning tokens" are all completion tokens (``completion_mask``): the think span cannot be
cut out of the mask alone, and the answer tokens are exactly the ones that should depend on the
image most. A completion without tokens abstains (NaN); one without an answer (none or empty)
scores 0, so dropping the answer never pays (a missing answer is never neutral).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from srmcr.cues.base import Cue

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout


def visual_grounding(logp: Tensor, blank_logp: Tensor, mask: Tensor, kappa: float = 0.5,
                     has_answer: Tensor | None = None) -> Tensor:  # (N, T) x 3, (N,) -> (N,)
    """sigmoid(Δ / κ) per completion, Δ the masked mean log-prob gain from seeing the image;
    0 where ``has_answer`` (default: all true) is false."""
    if kappa <= 0:
        raise ValueError(f"kappa must be > 0, got {kappa}")
    keep = mask.bool()
    # where(), not a product with the mask: padded positions may hold -inf or NaN log-probs.
    gain = torch.where(keep, logp.float() - blank_logp.float(), 0.0).sum(-1)  # (N,)
    tokens = keep.sum(-1)  # (N,)
    delta = gain / tokens.clamp(min=1)
    score = torch.sigmoid(delta / kappa)
    if has_answer is not None:
        score = score.masked_fill(~has_answer.to(score.device, torch.bool), 0.0)
    return score.masked_fill(tokens == 0, float("nan"))


class VisualGrounding(Cue):
    """:func:`visual_grounding` of a rollout (``rollout.logp``) against its blank-image pass."""

    name = "visual_grounding"

    def __init__(self, kappa: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kappa = kappa

    def score(self, rollout: Rollout, blank_logp: Tensor) -> Tensor:  # (N,)
        if rollout.logp is None:
            raise ValueError("visual_grounding needs rollout.logp (the sampler's T = 1 log-probs)")
        has_answer = torch.tensor([p.answer is not None for p in rollout.parsed])
        return visual_grounding(rollout.logp, blank_logp, rollout.completion_mask, self.kappa,
                                has_answer)
