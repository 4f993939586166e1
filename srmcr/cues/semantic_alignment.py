"""Semantic alignment: does the reasoning address the question, and does it lead to the answer?

score = ½·cos⁺(E(q), E(r)) + ½·cos⁺(E(s_K), E(a)); without an answer (absent or empty) the
second term is 0, so removing or emptying the answer never raises the score (scoring the first
term alone would let a policy gain by dropping its answer). Empty reasoning scores 0. Never
abstains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.cues.base import TextCue, cos_pos, run_text_cue
from srmcr.encoder import TextEncoder
from srmcr.parsing import Parsed

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout


def semantic_alignment(questions: Sequence[str], completions: Sequence[str],
                       encoder: TextEncoder | None = None) -> Tensor:  # (N,)
    """Semantic alignment of each completion with its question (``encoder=None``: MiniLM)."""
    return run_text_cue(_score, questions, completions, encoder)


def _inputs(questions: Sequence[str], parsed: Sequence[Parsed]) -> tuple[list[int], list[str]]:
    """Rows with reasoning (the others keep 0) and their texts: M questions, M reasonings, M last
    steps, M answers. Without an answer, last step and answer are "" (zero vector, not encoded)."""
    rows = [i for i, p in enumerate(parsed) if p.steps]
    return rows, ([questions[i] for i in rows] + [parsed[i].reasoning for i in rows]
                  + [parsed[i].steps[-1] if parsed[i].answer else "" for i in rows]
                  + [parsed[i].answer or "" for i in rows])


def _score(questions: Sequence[str], parsed: Sequence[Parsed],
           encoder: TextEncoder) -> Tensor:  # (N,)
    out = torch.zeros(len(parsed), device=encoder.device)
    rows, texts = _inputs(questions, parsed)
    if not rows:
        return out
    q, r, last, a = encoder.embed(texts).view(4, len(rows), -1)  # each (M, D)
    has_answer = torch.tensor([bool(parsed[i].answer) for i in rows], device=out.device)
    first = cos_pos(q, r)
    out[rows] = 0.5 * first + 0.5 * torch.where(has_answer, cos_pos(last, a), 0.0)
    return out


class SemanticAlignment(TextCue):
    """:func:`semantic_alignment` of a rollout, and the running mean of its scores."""

    name = "semantic_alignment"

    def texts(self, rollout: Rollout) -> list[str]:
        return _inputs(rollout.questions, rollout.parsed)[1]

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        return _score(rollout.questions, rollout.parsed, self.encoder)
