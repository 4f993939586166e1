"""What every cue shares: the registry, the inputs beyond the rollout, the ``Cue`` metric base and
small helpers of the text cues.

A cue scores each completion in [0, 1] (higher is better); NaN means "does not apply" (abstain)
and never hides an error. ``Cue.score(rollout, ...)`` returns the (N,) scores and changes
nothing; the parameters after ``rollout`` name the ``CueInputs`` fields it needs, and the module
computes only those an enabled cue takes. As a torchmetrics ``Metric``, a cue is also the running
mean of the scores it is updated with (``update(scores)``, ``compute()``): the reward scores once
per step and feeds the same scores to the mean.

A cue registers itself under its ``name`` when its class is defined (``CUES``); the package
imports every module of ``srmcr/cues/``, so a new cue is one file there.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric

from srmcr.encoder import TextEncoder, default_encoder
from srmcr.parsing import Parsed, parse

if TYPE_CHECKING:  # the rollout and policy modules import transformers: seconds
    from srmcr.policy_view import PolicyView
    from srmcr.rollout import Rollout

# name -> cue class, filled as each cue class is defined.
CUES: dict[str, type[Cue]] = {}


@dataclass(frozen=True)
class CueInputs:
    """What a cue's ``score`` may take beside the rollout, by parameter name. Each costs model
    passes, so the module computes a field only when an enabled cue's ``score`` takes it
    (``SelfReward.needs``); the others stay None."""

    blank_logp: Tensor | None = None  # (N, T) log π(token | blank image) at T = 1
    policy: PolicyView | None = None  # the policy, to ask about its own completions


INPUT_NAMES = tuple(f.name for f in fields(CueInputs))

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


class ScoreMean(Metric):
    """Running mean of per-completion scores, abstentions (NaN) left out; torchmetrics sums the
    states across processes in ``compute()``. NaN when nothing was scored."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, scores: Tensor) -> None:  # (N,)
        keep = ~scores.isnan()
        self.total += scores[keep].sum().to(self.total)
        self.count += keep.sum().to(self.count)

    def compute(self) -> Tensor:
        return self.total / self.count


class Cue(ScoreMean):
    """Base of the cues: ``score`` per completion (delegating to the pure function on top of the
    cue's file), and the running mean of its scores for ``<prefix>/reward/<name>``.

    A subclass that sets ``name`` is registered in ``CUES`` under it; its ``needs`` are the
    parameters of its ``score`` after ``rollout``, each a ``CueInputs`` field."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # from the signature of score: never set by hand
    uses_encoder: ClassVar[bool] = False  # the reward passes its shared encoder to these

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.needs = tuple(list(inspect.signature(cls.score).parameters)[2:])  # after self, rollout
        unknown = [n for n in cls.needs if n not in INPUT_NAMES]
        if unknown:
            raise TypeError(f"{cls.__qualname__}.score takes {unknown}: a cue's inputs beside "
                            f"the rollout are fields of CueInputs ({', '.join(INPUT_NAMES)})")
        if "name" in cls.__dict__:
            known = CUES.get(cls.name)
            where = f"{cls.__module__}.{cls.__qualname__}"
            if known is not None and f"{known.__module__}.{known.__qualname__}" != where:
                raise TypeError(f"two cues named {cls.name!r}: {known.__module__}."
                                f"{known.__qualname__} and {where}")
            CUES[cls.name] = cls  # the same class defined again (a module reload) replaces it

    @abstractmethod
    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        """Per-completion scores in [0, 1], NaN where the cue does not apply. A subclass adds
        the ``CueInputs`` it needs as keyword parameters, e.g. ``blank_logp: Tensor``."""

    def texts(self, rollout: Rollout) -> list[str]:
        """Texts this cue will embed for ``rollout`` (the reward primes the encoder with them)."""
        return []


class TextCue(Cue):
    """A cue on the parsed texts, scored through a (shared, cached) ``TextEncoder``."""

    uses_encoder = True

    def __init__(self, encoder: TextEncoder | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder or default_encoder()
