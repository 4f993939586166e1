"""Step consistency: does each step follow from the one before?

score = mean over adjacent steps of cos⁺(E(s_k), E(s_{k+1})). Empty reasoning scores 0; exactly
one step abstains (NaN): with nothing to follow, consistency does not apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.cues.base import (
    TextCue,
    cos_pos,
    embed_steps,
    multi_step,
    run_text_cue,
    step_texts,
)
from srmcr.encoder import TextEncoder
from srmcr.parsing import Parsed

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout


def step_consistency(questions: Sequence[str], completions: Sequence[str],
                     encoder: TextEncoder | None = None) -> Tensor:  # (N,)
    """Step consistency of each completion's reasoning (``encoder=None``: MiniLM)."""
    return run_text_cue(_score, questions, completions, encoder)


def _score(questions: Sequence[str], parsed: Sequence[Parsed],
           encoder: TextEncoder) -> Tensor:  # (N,)
    single = torch.tensor([len(p.steps) == 1 for p in parsed], dtype=torch.bool)
    out = torch.zeros(len(parsed)).masked_fill(single, float("nan")).to(encoder.device)
    rows = multi_step(parsed)
    for i, emb in zip(rows, embed_steps(parsed, rows, encoder)):  # emb (S, D)
        out[i] = cos_pos(emb[:-1], emb[1:]).mean()
    return out


class StepConsistency(TextCue):
    """:func:`step_consistency` of a rollout, and the running mean of its scores."""

    name = "step_consistency"

    def texts(self, rollout: Rollout) -> list[str]:
        return step_texts(rollout.parsed)

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        return _score(rollout.questions, rollout.parsed, self.encoder)
