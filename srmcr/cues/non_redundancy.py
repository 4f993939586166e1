"""Non-redundancy: does the reasoning move forward instead of looping?

score = (distinct word trigrams of r / all word trigrams of r) × (1 − share of step pairs
(i < j) with cos(E(s_i), E(s_j)) > 0.9). Words are the lower-cased ``\\w+`` runs of r. Fewer
than 3 words (empty reasoning included) scores 0; a single step has no pairs (share 0).
Never abstains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.cues.base import TextCue, embed_steps, multi_step, run_text_cue, step_texts
from srmcr.encoder import TextEncoder
from srmcr.parsing import Parsed

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout

DUPLICATE_COS = 0.9  # two steps above this cosine say the same thing
_WORD = re.compile(r"\w+")


def non_redundancy(questions: Sequence[str], completions: Sequence[str],
                   encoder: TextEncoder | None = None) -> Tensor:  # (N,)
    """Non-redundancy of each completion's reasoning (``encoder=None``: MiniLM)."""
    return run_text_cue(_score, questions, completions, encoder)


def trigram_ratio(text: str) -> float:
    """Distinct word trigrams / word trigrams; 0 with fewer than 3 words."""
    words = _WORD.findall(text.lower())
    trigrams = list(zip(words, words[1:], words[2:]))
    return len(set(trigrams)) / len(trigrams) if trigrams else 0.0


def duplicate_share(steps: Tensor) -> Tensor:  # (S, D) unit rows, S >= 2 -> ()
    """Share of the S·(S−1)/2 step pairs whose cosine exceeds ``DUPLICATE_COS``."""
    i, j = torch.triu_indices(len(steps), len(steps), offset=1, device=steps.device)
    return ((steps[i] * steps[j]).sum(-1) > DUPLICATE_COS).float().mean()


def _score(questions: Sequence[str], parsed: Sequence[Parsed],
           encoder: TextEncoder) -> Tensor:  # (N,)
    out = torch.tensor([trigram_ratio(p.reasoning) for p in parsed], device=encoder.device)
    rows = multi_step(parsed)
    for i, emb in zip(rows, embed_steps(parsed, rows, encoder)):
        out[i] = out[i] * (1.0 - duplicate_share(emb))
    return out


class NonRedundancy(TextCue):
    """:func:`non_redundancy` of a rollout, and the running mean of its scores."""

    name = "non_redundancy"

    def texts(self, rollout: Rollout) -> list[str]:
        return step_texts(rollout.parsed)

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        return _score(rollout.questions, rollout.parsed, self.encoder)
