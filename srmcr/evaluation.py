"""Greedy evaluation: one deterministic completion per prompt, answer accuracy, prediction rows.

The module's validation, test and predict steps call these; the maths of matching answers lives
in ``answers.py``. Greedy decoding (``do_sample=False``) makes the metrics a property of the
weights, not of the sampling temperature or the random seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchmetrics import Metric

from srmcr.answers import is_correct
from srmcr.rollout import Rollout, SamplingArgs, sample


def generate_greedy(model, processor, images: Sequence[Image.Image], questions: Sequence[str],
                    args: SamplingArgs, ids: Sequence[str] | None = None) -> Rollout:
    """One greedy completion per (image, question): a ``Rollout`` with G = 1 and T = 1.

    ``rollout.sample`` itself, with greedy decoding: same prompts, length cap, end tokens and
    token suppression, so what is evaluated is what is trained.
    """
    return sample(model, processor, images, questions, args, temperature=1.0, ids=ids,
                  greedy=True)


def correctness(answers: Sequence[str | None],
                references: Sequence[str | None]) -> list[bool | None]:
    """Per completion: whether its parsed answer matches the reference; None without one."""
    return [None if ref is None else is_correct(ans, ref) for ans, ref in zip(answers, references)]


class EvalMetrics(Metric):
    """Running sums over an evaluation epoch, summed across ranks by torchmetrics.

    ``compute()`` gives ``accuracy`` (over records with a reference; NaN if none has one),
    ``format_rate``, ``completion_len`` (tokens), ``truncated`` (share), and the counts
    ``labeled`` and ``unlabeled`` (records without a reference, excluded from accuracy).
    """

    full_state_update = False
    _NAMES = ("correct", "labeled", "unlabeled", "well_formed", "completions", "tokens",
              "truncated")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._NAMES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, rollout: Rollout, references: Sequence[str | None]) -> None:
        correct = correctness([p.answer for p in rollout.parsed], references)
        lengths = rollout.completion_mask.sum(-1)
        for name, value in (("correct", sum(c is True for c in correct)),
                            ("labeled", sum(c is not None for c in correct)),
                            ("unlabeled", sum(c is None for c in correct)),
                            ("well_formed", float(rollout.well_formed.sum())),
                            ("completions", len(rollout)), ("tokens", float(lengths.sum())),
                            ("truncated", float(rollout.truncated.sum()))):
            state = getattr(self, name)
            state += value

    def compute(self) -> dict[str, Tensor]:
        n = self.completions.clamp(min=1)
        return {"accuracy": self.correct / self.labeled, "format_rate": self.well_formed / n,
                "completion_len": self.tokens / n, "truncated": self.truncated / n,
                "labeled": self.labeled, "unlabeled": self.unlabeled}


def eval_log_dict(prefix: str, stats: dict[str, Tensor],
                  cue_means: dict[str, Tensor]) -> dict[str, float]:
    """``<prefix>/accuracy`` ... and ``<prefix>/reward/<cue>``; undefined (NaN) values left out
    (no labeled record: no accuracy; a cue that abstained everywhere: no mean)."""
    values = {**stats, **{f"reward/{name}": mean for name, mean in cue_means.items()}}
    return {f"{prefix}/{key}": float(v) for key, v in values.items() if math.isfinite(float(v))}


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None  # NaN (abstain) -> JSON null


def prediction_records(rollout: Rollout, scores: Tensor, cue_names: Sequence[str],
                       references: Sequence[str | None],
                       sources: Sequence[str]) -> list[dict[str, Any]]:
    """One JSON-ready row per completion (G = 1): the schema of ``predictions.jsonl``.

    ``scores`` (N, K) are the raw cue scores in ``cue_names`` order; an abstention is null.
    ``correct`` is null where the record has no reference answer.
    """
    correct = correctness([p.answer for p in rollout.parsed], references)
    lengths = rollout.completion_mask.sum(-1).tolist()
    rows = scores.float().cpu().tolist()
    return [{"id": rollout.ids[i], "source": sources[i], "question": rollout.questions[i],
             "answer": references[i], "completion": rollout.texts[i],
             "steps": list(p.steps), "parsed_answer": p.answer, "well_formed": p.well_formed,
             "correct": correct[i], "completion_len": int(lengths[i]),
             "truncated": bool(rollout.truncated[i]),
             "scores": {name: _finite_or_none(s) for name, s in zip(cue_names, rows[i])}}
            for i, p in enumerate(rollout.parsed)]
