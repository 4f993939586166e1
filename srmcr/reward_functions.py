"""The user's own reward functions, named by import path in the config, with TRL's signature.

    model:
      reward:
        init_args:
          functions: [{path: "mypkg.rewards:brevity", weight: 0.5}]

``fn(prompts, completions, **fields) -> list[float]``: ``prompts`` holds the question of each
completion (N, each question repeated G times), ``completions`` the N decoded texts, and the
keyword ``fields`` the completion's record, one list of N each: ``id`` and ``source`` always,
``answer`` (the label) only with ``uses_labels: true``. One number per completion; None or NaN
abstains. A function is a column of the reward like a cue: group-normalized, its ``weight`` its
prior, its reliability learned, logged as ``train/reward/<function name>``.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from srmcr.cues.base import ScoreMean
from srmcr.errors import ConfigError, require

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardFunctionArgs:
    """One reward function of the user's."""

    path: str
    """``module:function``, importable where the run starts (e.g. ``mypkg.rewards:brevity``).
    Called once per step as ``fn(prompts, completions, id=[...], source=[...])`` (N each); returns
    one number per completion, None or NaN to abstain. Its name is its log key:
    ``train/reward/<function>``."""
    weight: float = 1.0
    """Prior weight of its column, beside the cues' priors (finite, > 0); reliability weighting
    applies to it as to a cue."""
    uses_labels: bool = False
    """Also pass ``answer=[...]``, each completion's record label (None where it has none). The
    run then TRAINS ON LABELS and is no longer label-free, and says so in a warning: for
    controls such as an oracle reward, never in a label-free recipe."""


@dataclass(frozen=True)
class Records:
    """What reward functions read of the step's records beside the rollout, per prompt (B,)."""

    sources: Sequence[str]  # "path/data.jsonl:17" or "shapes:train:17"
    answers: Sequence[str | None] | None = None  # labels: only when a function uses_labels


def load_function(path: str, setting: str) -> Callable[..., Any]:
    """The callable at ``module:attribute``; a ``ConfigError`` naming ``setting`` if it is not
    one."""
    module_name, _, attribute = path.partition(":")
    require({f"{setting}={path!r}: write it as 'module:function', e.g. "
             f"'mypkg.rewards:brevity'": bool(module_name and attribute)})
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(f"{setting}={path!r}: cannot import {module_name!r} ({error}); run from "
                          f"the folder that holds it or install it") from error
    for part in attribute.split("."):
        target = getattr(target, part, None)
    require({f"{setting}={path!r}: {module_name} has no callable {attribute!r}": callable(target)})
    return target


def as_scores(values: Any, n: int, path: str, ids: Sequence[str]) -> Tensor:  # (N,)
    """A function's return value as (N,) float32 scores, None -> NaN (abstain); a
    ``ConfigError`` naming the function for anything but one finite number or None each."""
    if hasattr(values, "tolist"):  # a tensor or an array
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ConfigError(f"reward function {path} returned a {type(values).__name__}: return a "
                          f"list of {n} numbers, one per completion (None to abstain)")
    if len(values) != n:
        raise ConfigError(f"reward function {path} returned {len(values)} values for {n} "
                          f"completions: return one number per completion (None to abstain)")
    out = []
    for i, value in enumerate(values):
        if value is None:
            value = math.nan
        if not isinstance(value, numbers.Real):
            raise ConfigError(f"reward function {path} returned {value!r} for completion {i} "
                              f"(record {ids[i]}): return a number, or None to abstain")
        if math.isinf(value):
            raise ConfigError(f"reward function {path} returned {value} for completion {i} "
                              f"(record {ids[i]}): rewards must be finite (None or NaN abstain)")
        out.append(float(value))
    return torch.tensor(out, dtype=torch.float32)


class RewardFunction(ScoreMean):
    """A user function as a reward column (``score``), and the running mean of its values.

    Args:
        args: its config entry.
        setting: where the entry sits in the config, for errors (``reward.functions[0]``).
    """

    def __init__(self, args: RewardFunctionArgs, setting: str = "reward.functions[0]") -> None:
        super().__init__()
        self.args = args
        self.fn = load_function(args.path, f"{setting}.path")
        self.name = args.path.rpartition(":")[2].rpartition(".")[2]
        if args.uses_labels:
            log.warning("%s: %s has uses_labels: true, so this run TRAINS ON LABELS (the records' "
                        "answers): it is not label-free", setting, args.path)

    def score(self, rollout: Rollout, records: Records | None = None) -> Tensor:  # (N,)
        """The function's values for ``rollout``'s completions; ``records`` must hold the
        answers when the function uses labels."""
        G = rollout.group_size
        fields: dict[str, list] = {"id": list(rollout.ids)}
        if records is not None:
            if len(records.sources) * G != len(rollout):
                raise ValueError(f"{len(records.sources)} records for {len(rollout)} completions "
                                 f"in groups of {G}")
            fields["source"] = [s for s in records.sources for _ in range(G)]
        if self.args.uses_labels:
            if records is None or records.answers is None:
                raise ValueError(f"reward function {self.args.path} uses labels: pass Records "
                                 "with the answers")
            fields["answer"] = [a for a in records.answers for _ in range(G)]
        values = self.fn(list(rollout.questions), list(rollout.texts), **fields)
        return as_scores(values, len(rollout), self.args.path, fields["id"])
