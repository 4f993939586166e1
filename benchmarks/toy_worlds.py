"""The worlds ``benchmarks/toy_world.py`` runs its experiment in, one ``World`` each, and its plan.

A world names what changes between them: the config overlay every ``main.py`` call gets, the
warm start, the splits (selection, report, and the warm-up's own difficulty to check retention
on), how a completion's flaws are judged against its record, and the plan's time figures.

- ``shapes``: single-read questions about a scene (``toyworld.shapes``), ``warm:small``;
  flawed = ``toyworld.flaws`` finds a loop, a hallucinated shape or a contradiction.
- ``tally``: add up the sides of the shapes of one colour (``toyworld.tally``), ``warm:tally``
  warmed up on the base level, trained and reported on the frontier, one notch harder; the
  retention split is the base level. Flawed = ``toyworld.tally.check_trace`` finds any slip.

The plan (``--dry-run``) prices each run from its world's figures: process starts, steps,
in-run validation and the held-out (and retention) evaluations.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toyworld import tally
from toyworld.flaws import DETECTORS, find_flaws
from toyworld.recipes import RECIPES
from toyworld.shapes import make_record
from toyworld.sources import parse_shapes, parse_tally

WorldName = Literal["shapes", "tally"]
# What ``toyworld.tally.check_trace`` counts, in its order (tests/test_benchmarks.py checks it).
SLIPS = ("wrong_cell", "repeat", "misread", "sides", "sum", "garbled", "missed", "answer")


def _index(row: dict) -> int:
    """The record index of a prediction row (``source`` ends in ``:<index>``)."""
    return int(row["source"].rsplit(":", 1)[1])


def shapes_flaws(split: str, rows: Sequence[dict]) -> list[set[str]]:
    """Per row of ``predictions.jsonl`` on the ``shapes:`` split ``split``: the flaws its steps
    show about the record's scene (``toyworld.flaws``)."""
    source = parse_shapes(split)
    return [find_flaws(row["steps"], make_record(source.seed, source.split, _index(row),
                                                 source.size).scene) for row in rows]


def tally_slips(split: str, rows: Sequence[dict]) -> list[set[str]]:
    """Per row on the ``tally:`` split ``split``: the kinds of slip ``check_trace`` counts at
    least once in its steps and answer."""
    source = parse_tally(split)
    out = []
    for row in rows:
        record = tally.make_record(source.seed, source.split, _index(row), source.level,
                                   source.size)
        counts = tally.check_trace(record, row["steps"], row["parsed_answer"])
        out.append({kind for kind, count in counts.items() if count})
    return out


@dataclass(frozen=True)
class World:
    name: WorldName
    overlays: tuple[str, ...]  # after configs/tiny.yaml, before the recipe, in every main.py call
    model: str  # the warm start
    quick_model: str  # --quick's (a seconds-to-build recipe of the same world)
    spec: str  # a split of the trained-on kind; {split} and {n} filled in
    retention: str | None  # the warm-up's own difficulty, same fields: does training forget it?
    flaw_kinds: tuple[str, ...]
    flaws: Callable[[str, Sequence[dict]], list[set[str]]]  # (split spec, rows) -> kinds per row
    # Planning figures (2-core machine, 1 torch thread, B = 4 x G = 4, warm:small's size):
    # seconds per SR-MCR step, per greedy record evaluated (cues scored) on ``spec`` and on
    # ``retention`` (accuracy only), per pre-flight question (greedy + G = 8 samples). Only the
    # plan's estimate reads them.
    step_s: float
    record_s: float
    retention_record_s: float
    preflight_s: float

    def split(self, split: str, n: int) -> str:
        return self.spec.format(split=split, n=n)

    def retention_split(self, split: str, n: int) -> str | None:
        return None if self.retention is None else self.retention.format(split=split, n=n)


WORLDS: dict[WorldName, World] = {
    # Measured with warm:small: 1.1 s per step (48 new tokens), 0.15 s per evaluated record,
    # 6 minutes for a 1024-question pre-flight at G = 8 (docs/results.md).
    "shapes": World("shapes", (), "warm:small", "warm:tiny", "shapes:{split}?n={n}", None,
                    tuple(DETECTORS), shapes_flaws, step_s=1.1, record_s=0.15,
                    retention_record_s=0.0, preflight_s=0.35),
    # Completions ~2.1x longer (112 new tokens; clean frontier traces average 75 tokens of the
    # tiny tokenizer, base ones 47, shapes ones 36). Measured here on tiny:small, warm:tally's
    # architecture, with full-length completions: a step at 112 new tokens takes 2.0x one at 48,
    # a predict 2.3-2.5x; so the shapes figures x 2 (steps), x 2.3 (frontier records, pre-flight)
    # and x 1.4 (base records) where the retention evaluation scores no cues, about a third of an
    # evaluation's time. Estimates until a run of warm:tally measures them (``step_s`` in each
    # run's result.json, ``fit_s``, ``eval_s``).
    "tally": World("tally", ("configs/tally.yaml",), "warm:tally", "warm:tally-tiny",
                   "tally:{split}?level=frontier&n={n}", "tally:{split}?level=base&n={n}",
                   SLIPS, tally_slips, step_s=2.2, record_s=0.35, retention_record_s=0.14,
                   preflight_s=0.8),
}


def summarize(predictions: Path, split: str, world: World, cues: Sequence[str]) -> dict:
    """Accuracy, format rate, each cue's mean, flaw rates of one evaluation's predictions on
    ``split`` (a split of ``world``); a cue the scorer did not run has mean None."""
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line]
    flaws = world.flaws(split, rows)

    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    def tracks_correctness(cue: str) -> float | None:
        """Pearson correlation of the cue's score with being correct (the question a label-free
        reward lives by: does a higher cue mean a better answer?)."""
        pairs = [(r["scores"][cue], float(r["correct"])) for r in rows
                 if r["scores"].get(cue) is not None]
        try:
            return statistics.correlation(*zip(*pairs)) if len(pairs) > 2 else None
        except statistics.StatisticsError:  # constant scores or all (in)correct
            return None
    return {"n": len(rows), "accuracy": mean([float(r["correct"]) for r in rows]),
            "correct": {r["source"]: bool(r["correct"]) for r in rows},  # for paired tests
            "format_rate": mean([float(r["well_formed"]) for r in rows]),
            "completion_len": mean([r["completion_len"] for r in rows]),
            "cues": {c: mean([r["scores"][c] for r in rows if r["scores"].get(c) is not None])
                     for c in cues},
            "correlation_with_correct": {c: tracks_correctness(c) for c in cues},
            "flaw_rate": mean([float(bool(f)) for f in flaws]),
            "flaws": {name: mean([float(name in f) for f in flaws]) for name in world.flaw_kinds}}

# ---- the plan ----------------------------------------------------------------------------------
# Planning figures for --dry-run's budget, besides each world's: seconds per process start
# (imports, model load), and steps relative to SR-MCR's, from benchmarks/step_time.py --recipes
# (docs/performance.md; the controls' rewards cost about what MM-UPT's vote does: no cue, no
# encoder). Only the plan's time estimate reads them.
START_S = 15.0
STEP_COST = {"mm_upt": 0.65, "vision_sr1_labelfree": 0.95, "srmcr_plus": 1.33, "oracle": 0.65,
             "random": 0.65}
BUDGET_MIN = 90  # the issue's: both worlds' experiments together, on 2 cores


def planned_parts(variant: str | None, a: argparse.Namespace) -> dict[str, float]:
    """Planned seconds of one run of ``variant`` (None: the warm baseline) by phase: process
    starts, training steps, in-run validation on the selection split, held-out evaluations."""
    w, retention = a.world, bool(a.retention)
    checkpoint = a.val_n * (w.record_s + (w.retention_record_s if retention else 0.0))
    predicts = 1 + retention  # main.py predict calls per checkpoint
    if variant is None:
        return {"start": predicts * START_S, "train": 0.0, "validate": 0.0,
                "evaluate": checkpoint}
    return {"start": (1 + 2 * predicts) * START_S,
            "train": a.steps * w.step_s * STEP_COST.get(variant, 1.0),
            "validate": (a.steps // a.val_every + 1) * a.select_n * w.record_s,
            "evaluate": 2 * checkpoint}


def planned_seconds(variant: str | None, a: argparse.Namespace) -> float:
    return sum(planned_parts(variant, a).values())


def preflight_seconds(a: argparse.Namespace) -> float:
    return START_S + a.val_n * a.world.preflight_s


def makespan(costs: list[float], jobs: int) -> float:
    """Wall time of running ``costs`` longest first on ``jobs`` workers (what the pool does)."""
    load = [0.0] * jobs
    for cost in sorted(costs, reverse=True):
        load[load.index(min(load))] += cost
    return max(load, default=0.0)


def plan_line(a: argparse.Namespace, runs: list[str], planned: float) -> str:
    """The plan of ``runs`` (variant names) under ``a`` in one line: its wall minutes, its
    machine minutes by phase, and the figures it used."""
    parts = [planned_parts(name, a) for name in (None, *runs)]
    total = {k: sum(p[k] for p in parts) / 60 for k in parts[0]}
    w = a.world
    build = RECIPES.get(a.model.removeprefix("warm:")) if a.model.startswith("warm:") else None
    build = None if build is not None and build.sha256 else build  # shipped: nothing to build
    retention = f", retention {a.retention}" if a.retention else ""
    return (f"toy world {w.name}: {a.model}, {len(runs)} training runs of {a.steps} steps + the "
            f"warm baseline, held-out {a.split}{retention}, validation on {a.select} every "
            f"{a.val_every} steps, {a.jobs} at once (1 torch thread each); planned ~"
            f"{planned / 60:.0f} min (summed over runs: training {total['train']:.0f}, in-run "
            f"validation {total['validate']:.0f}, evaluation {total['evaluate']:.0f}, pre-flight "
            f"{preflight_seconds(a) / 60:.0f}, process starts {total['start']:.0f} min) at "
            f"{w.step_s} s/step, {w.record_s} s/evaluated record"
            + (f" ({w.retention_record_s} on retention)" if a.retention else "")
            + f", {START_S:.0f} s/process start"
            + (f" (+ ~{build.minutes:g} min once if {a.model} is not cached yet)" if build else ""))
