"""Self-certainty: how likely the policy finds its own completion (Intuitor, EMPO, 2025).

score = exp(mean over completion tokens of log π(t | image, prompt) at T = 1), the geometric mean
token probability, in [0, 1]. Free: the sampler records every token's T = 1 log-prob from the
logits it drew from (``rollout.logp``). A completion without tokens abstains (NaN); one without
an answer (none or empty) scores 0, so dropping the answer never pays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.cues.base import Cue

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout


def self_certainty(logp: Tensor, mask: Tensor, has_answer: Tensor) -> Tensor:
    """exp(masked mean log-prob) per completion; 0 without an answer, NaN without tokens.
    (N, T), (N, T), (N,) -> (N,)."""
    keep = mask.bool()
    tokens = keep.sum(-1)
    mean = torch.where(keep, logp.float(), 0.0).sum(-1) / tokens.clamp(min=1)
    score = mean.exp().masked_fill(~has_answer.to(mean.device, torch.bool), 0.0)
    return score.masked_fill(tokens == 0, float("nan"))


class SelfCertainty(Cue):
    """:func:`self_certainty` of a rollout: reads ``rollout.logp`` (filled by the sampler)."""

    name = "self_certainty"

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        if rollout.logp is None:
            raise ValueError("self_certainty needs rollout.logp (the sampler's T = 1 log-probs)")
        has_answer = torch.tensor([p.answer is not None for p in rollout.parsed])
        return self_certainty(rollout.logp, rollout.completion_mask, has_answer)
