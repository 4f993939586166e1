"""What every cue shares: the ``Cue`` metric base and small helpers of the text cues.

A cue scores each completion in [0, 1] (higher is better); NaN means "does not apply" (abstain)
and never hides an error. Calling a cue on a ``Rollout`` returns the (N,) scores and accumulates
a running mean of the non-NaN ones, which torchmetrics sums across processes in ``compute()``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from srmcr.encoder import TextEncoder, default_encoder
from srmcr.parsing import Parsed, parse

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout

# The shared core of a text cue: (questions (N,), parsed (N,), encoder) -> scores (N,).
TextCore = Callable[[Sequence[str], Sequence[Parsed], TextEncoder], Tensor]


def run_text_cue(core: TextCore, questions: Sequence[str], completions: Sequence[str],
                 encoder: TextEncoder | None) -> Tensor:  # (N,)
    """The functional entry point of a text cue: texts -> parsed -> the cue's shared core."""
    if len(questions) != len(completions):
        raise ValueError(f"{len(questions)} questions for {len(completions)} completions")
    return core(questions, [parse(c) for c in completions], encoder or default_encoder())


def cos_pos(a: Tensor, b: Tensor) -> Tensor:  # (M, D), (M, D) -> (M,)
    """cos⁺ of rows of unit vectors; a zero vector (empty text) gives 0."""
    return (a * b).sum(-1).clamp(0.0, 1.0)


def multi_step(parsed: Sequence[Parsed]) -> list[int]:
    """Indices of the completions with at least two steps (the only ones whose steps matter)."""
    return [i for i, p in enumerate(parsed) if len(p.steps) >= 2]


def embed_steps(parsed: Sequence[Parsed], rows: Sequence[int],
                encoder: TextEncoder) -> list[Tensor]:  # [(S_i, D)] for i in rows
    """Step embeddings of the given completions, with one ``embed`` call for all of them."""
    if not rows:
        return []
    flat = encoder.embed([s for i in rows for s in parsed[i].steps])  # (sum S_i, D)
    return list(flat.split([len(parsed[i].steps) for i in rows]))


def step_texts(parsed: Sequence[Parsed]) -> list[str]:
    return [s for i in multi_step(parsed) for s in parsed[i].steps]


class Cue(Metric):
    """Base of the five cues: per-completion ``score`` plus a running mean for logging."""

    name: ClassVar[str]
    needs_blank_logprobs: ClassVar[bool] = False
    needs_policy: ClassVar[bool] = False  # score() calls rollout.policy (a PolicyView)
    uses_encoder: ClassVar[bool] = False  # the reward passes its shared encoder to these
    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")
        self._last: Tensor | None = None  # the scores of the latest update, for forward

    @abstractmethod
    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        """Per-completion scores in [0, 1], NaN where the cue does not apply."""

    def texts(self, rollout: Rollout) -> list[str]:
        """Texts this cue will embed for ``rollout`` (the reward primes the encoder with them)."""
        return []

    def update(self, rollout: Rollout) -> None:
        scores = self.score(rollout)
        keep = ~scores.isnan()
        self.total += scores[keep].sum().to(self.total)
        self.count += keep.sum().to(self.count)
        self._last = scores

    def forward(self, rollout: Rollout) -> Tensor:  # (N,)
        """Per-completion scores of ``rollout`` (not the batch mean, unlike torchmetrics)."""
        self.update(rollout)
        assert self._last is not None
        return self._last

    def compute(self) -> Tensor:
        """Mean of the non-abstaining scores seen since the last reset (NaN if none)."""
        return self.total / self.count


class TextCue(Cue):
    """A cue on the parsed texts, scored through a (shared, cached) ``TextEncoder``."""

    uses_encoder = True

    def __init__(self, encoder: TextEncoder | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder or default_encoder()
