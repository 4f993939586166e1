"""Answer certainty: how likely the policy finds its own final answer, given its reasoning.

score = exp(mean over the answer's tokens of log π(t | image, prompt, reasoning) at T = 1): the
geometric mean probability of the tokens inside ``<answer>...</answer>``
(``rollout.answer_mask``, found by the sampler). Self-certainty (``self_certainty``) averages
over every token, reasoning included; this one asks only how sure the model is of what it
concluded. Free: the sampler records each token's T = 1 log-prob. A completion without an answer
scores 0 (never neutral).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from srmcr.cues.base import Cue

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout


def answer_certainty(logp: Tensor, answer_mask: Tensor) -> Tensor:  # (N, T), (N, T) -> (N,)
    """exp(mean log-prob over the answer tokens) per completion; 0 without answer tokens."""
    keep = answer_mask.bool()
    tokens = keep.sum(-1)
    mean = (logp.float() * keep).sum(-1) / tokens.clamp(min=1)
    return mean.exp().masked_fill(tokens == 0, 0.0)


class AnswerCertainty(Cue):
    """:func:`answer_certainty` of a rollout: reads ``rollout.logp`` and ``answer_mask``."""

    name = "answer_certainty"

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        if rollout.logp is None or rollout.answer_mask is None:
            raise ValueError("answer_certainty needs rollout.logp and rollout.answer_mask (both "
                             "filled by the sampler)")
        return answer_certainty(rollout.logp, rollout.answer_mask)
