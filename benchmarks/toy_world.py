"""Does label-free training help? Warm start -> evaluate -> SR-MCR without labels -> evaluate.

    .venv/bin/python -m benchmarks.toy_world                 # everything: about an hour on 2 cores
    .venv/bin/python -m benchmarks.toy_world --quick         # plumbing check on warm:tiny, ~35 s
    .venv/bin/python -m benchmarks.toy_world --variants srmcr,no_cooling --seeds 0 --steps 40

The warm start is ``warm:<size>`` (tiny:<size> fine-tuned on shapes-world reasoning traces, built
and cached on first use). Every run trains from it through the real entry point, ``main.py fit
-c configs/tiny.yaml -c <overlays> ...`` in a subprocess, with its seed (``seed_everything`` and
the data shuffle) and its log folder under ``--out``, validating every quarter of the run on a
labelled selection split (``--select``, default ``shapes:val``: the curves, and ``best.ckpt``,
which is what a user's ``adapter/`` is exported from). The evaluation is ``main.py predict`` on a
held-out split that nothing else uses (``shapes:heldout``), greedy: before training the warm
model itself (its LoRA adapter starts at zero), after it each run's last checkpoint and its best
checkpoint on the selection split (the exported adapter). The scorer is always the five SR-MCR
cues, whatever reward the run trained on (the checkpoint's reward state is dropped: it does not
change what the model generates), so the cue columns compare. Labels enter only the accuracy.
A trace is flawed-looking when ``toyworld.flaws`` finds a loop, a hallucinated shape or a
contradiction in its steps, judged against the record's scene.

Variants: ``srmcr`` (configs/recipes/srmcr.yaml; every ``--seeds``); the ablations ``no_<cue>``,
``no_cooling`` (no ConfidenceCooling: T = 1), ``no_reliability`` (fixed equal weights) and
``kl_0.1`` (β = 0.1 instead of 0.01: how much does holding the policy near the start matter) and
``lr_5e-4`` (a 5× higher learning rate, the earlier default); the
recipes ``mm_upt``, ``vision_sr1_labelfree``, ``srmcr_plus``; these run the first seed only. Each
run uses 1 torch thread (at 2, OpenMP spin-waiting on the 2-core machine makes steps several
times slower), ``--jobs`` at once. A finished run keeps its ``result.json`` and checkpoints and
is reused under the same training settings (``--fresh`` reruns), so an interrupted experiment
resumes, and evaluating finished runs on more questions (``--val-n 1024``) trains nothing
again. Writes ``<out>/toy_world.md`` (the table), ``<out>/toy_world.json`` (every number) and
the plot (``--png``, default docs/toy_world.png; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.toy_world_report import aggregate, plot, table  # noqa: E402
from callbacks.best import checkpoint_record  # noqa: E402
from toyworld.flaws import DETECTORS, find_flaws  # noqa: E402
from toyworld.shapes import make_record  # noqa: E402
from toyworld.sources import parse_shapes  # noqa: E402

BASE, SRMCR = "configs/tiny.yaml", "configs/recipes/srmcr.yaml"
_REWARD = yaml.safe_load((ROOT / SRMCR).read_text())["model"]["reward"]
CUES: list[str] = _REWARD["init_args"]["cues"]  # the main variant's, and every evaluation's
COOLING, NO_COOLING = "callbacks.cooling.ConfidenceCooling", "no_cooling.yaml"
HELD_OUT = "heldout"  # a split no config, test or warm-up uses: nothing was ever tuned on it
PREFLIGHT_G = 8  # the pre-flight of the warm start samples G completions per held-out question
# Planning figures for --dry-run's budget (2-core machine, 1 torch thread, warm:small, tiny.yaml's
# B = 4 x G = 4, 48 new tokens): seconds per SR-MCR step, per evaluated record and per process
# start (imports, model load); recipe steps relative to SR-MCR's, from benchmarks/step_time.py
# --recipes (docs/performance.md). Only the plan's time estimate reads them.
STEP_S, RECORD_S, START_S = 1.1, 0.15, 15.0
STEP_COST = {"mm_upt": 0.65, "vision_sr1_labelfree": 0.95, "srmcr_plus": 1.33}


@dataclass(frozen=True)
class Variant:
    name: str
    group: Literal["main", "ablation", "recipe"]
    label: str  # the table's row name
    overlays: tuple[str, ...] = (SRMCR,)
    overrides: tuple[str, ...] = ()
    cooling: bool = True


def all_variants() -> dict[str, Variant]:
    out = [Variant("srmcr", "main", "SR-MCR")]
    out += [Variant(f"no_{cue}", "ablation", f"− {cue}", overrides=(
        f"--model.reward.init_args.cues=[{','.join(c for c in CUES if c != cue)}]",))
        for cue in CUES]
    out += [Variant("no_cooling", "ablation", "− cooling (T = 1)", cooling=False),
            Variant("no_reliability", "ablation", "− reliability weighting",
                    overrides=("--model.reward.init_args.reliability=false",)),
            Variant("kl_0.1", "ablation", "β = 0.1 (10× the KL weight)",
                    overrides=("--model.grpo.beta=0.1",)),
            Variant("lr_5e-4", "ablation", "lr 5e-4 (5× higher, the earlier default)",
                    overrides=("--model.optimizer.init_args.lr=0.0005",))]
    out += [Variant(name, "recipe", label, overlays=(f"configs/recipes/{name}.yaml",))
            for name, label in (("mm_upt", "MM-UPT"), ("vision_sr1_labelfree",
                                "Vision-SR1 (label-free)"), ("srmcr_plus", "SR-MCR+"))]
    return {v.name: v for v in out}


def write_no_cooling(out: Path) -> None:
    """``<out>/no_cooling.yaml``: tiny.yaml's callbacks without ConfidenceCooling (a YAML list
    replaces the base's), sampling at a fixed T = 1. Written once, before runs start."""
    callbacks = yaml.safe_load((ROOT / BASE).read_text())["trainer"]["callbacks"]
    out.mkdir(parents=True, exist_ok=True)
    (out / NO_COOLING).write_text(yaml.safe_dump({
        "trainer": {"callbacks": [c for c in callbacks if c["class_path"] != COOLING]},
        "model": {"sampling": {"temperature": 1.0}}}, sort_keys=False))


def _logger(folder: Path) -> list[str]:
    return [f"--trainer.logger.init_args.save_dir={folder.parent.parent}",
            f"--trainer.logger.init_args.name={folder.parent.name}",
            f"--trainer.logger.init_args.version={folder.name}"]


def fit_args(v: Variant, seed: int, a: argparse.Namespace, folder: Path) -> list[str]:
    overlays = [*v.overlays, *([] if v.cooling else [str(a.out / NO_COOLING)])]
    return ["fit", "-c", BASE, *(x for o in overlays for x in ("-c", o)), *v.overrides,
            f"--model.policy.model={a.model}", f"--seed_everything={seed}", f"--data.seed={seed}",
            f"--trainer.max_steps={a.steps}", f"--trainer.val_check_interval={a.val_every}",
            f"--data.val={a.select}", "--model.sampling.val_group_size=0", *a.set,
            *_logger(folder)]


def eval_args(a: argparse.Namespace, folder: Path, ckpt: Path | None) -> list[str]:
    return ["predict", "-c", BASE, "-c", SRMCR, f"--model.policy.model={a.model}",
            f"--data.predict={a.split}", *_logger(folder),
            *([f"--ckpt_path={ckpt}"] if ckpt else [])]


def run_main(args: list[str], log: Path) -> float:
    """``main.py <args>`` in a subprocess at 1 torch thread; its wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    with log.open("w") as f:
        code = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, stdout=f,
                              stderr=subprocess.STDOUT).returncode
    if code:
        raise RuntimeError(f"main.py {args[0]} failed ({code}); log: {log}\n"
                           + log.read_text()[-3000:])
    return time.monotonic() - start


def strip_reward_state(ckpt: Path, dest: Path) -> Path:
    """The checkpoint's LoRA weights without the reward's state, so a scorer with other cues
    loads any recipe's run, and without the run's sampling temperature and RNG state, so the
    caller's settings decide how it samples."""
    import torch

    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    state["state_dict"] = {k: v for k, v in state["state_dict"].items()
                           if not k.startswith("reward.")}
    state.pop("srmcr", None)
    torch.save(state, dest)
    return dest


def summarize(predictions: Path, split: str) -> dict:
    """Accuracy, format rate, each cue's mean, flaw rates of one evaluation's predictions."""
    source = parse_shapes(split)
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line]
    flaws = []
    for row in rows:
        index = int(row["source"].rsplit(":", 1)[1])
        scene = make_record(source.seed, source.split, index, source.size).scene
        flaws.append(find_flaws(row["steps"], scene))

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
                     for c in CUES},
            "correlation_with_correct": {c: tracks_correctness(c) for c in CUES},
            "flaw_rate": mean([float(bool(f)) for f in flaws]),
            "flaws": {name: mean([float(name in f) for f in flaws]) for name in DETECTORS}}


def eval_folder(folder: Path, kind: str, a: argparse.Namespace) -> Path:
    """Where ``main.py predict`` writes one evaluation of a run on ``a.split``: ``kind`` "eval"
    (the last checkpoint, or the warm start) or "best" (the best checkpoint); named by the split,
    so evaluating finished runs on another split (``--val-n 1024``) keeps the earlier ones."""
    return folder.with_name(f"{folder.name}-{kind}-{a.split_name}{a.val_n}")


def evaluations(folder: Path, a: argparse.Namespace, trained: bool) -> dict:
    """Held-out summaries: ``eval`` of the last checkpoint (or of the warm start), ``eval_best``
    of the best checkpoint by the selection split, the adapter a user gets (trained runs only)."""
    kinds = {"eval": "eval", "eval_best": "best"} if trained else {"eval": "eval"}
    return {key: summarize(eval_folder(folder, kind, a) / "predictions.jsonl", a.split)
            for key, kind in kinds.items()}


def curves(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """(optimizer steps done, value): ``val/accuracy`` after each validation, and the raw reward
    of each step's rollouts (``train/reward_raw``, sampled after ``step`` updates); and the
    median seconds between steps (what ``STEP_S`` plans with)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    # A validation after step k is logged at k - 1; the first one (ValidateAtStart in
    # tiny.yaml) ran before any step.
    out = {tag: [(0 if i == 0 and shift else e.step + shift, e.value)
                 for i, e in enumerate(events.Scalars(tag))] if tag in tags else []
           for tag, shift in (("val/accuracy", 1), ("val/format_rate", 1),
                              ("train/reward_raw", 0), ("train/kl", 0))}
    rewards = events.Scalars("train/reward_raw") if "train/reward_raw" in tags else []
    gaps = [b.wall_time - a.wall_time for a, b in zip(rewards, rewards[1:])]
    return out, statistics.median(gaps) if gaps else None


def preflight(a: argparse.Namespace) -> dict:
    """``main.py preflight`` of the warm start on the held-out split (G = 8, sampled as the runs
    sample: tiny.yaml's starting temperature and ``--set`` overrides): greedy, mean@8, maj@8,
    maj@8's paired lead over greedy and the SR-MCR reward's AUC; cached."""
    import torch

    from srmcr.validity import verdict

    folder = a.out / "preflight"
    done = folder / "result.json"
    settings = {"model": a.model, "split": a.preflight_split, "group_size": PREFLIGHT_G,
                "set": a.set}
    if done.exists() and not a.fresh and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    run_main(["preflight", "-c", BASE, "-c", SRMCR, f"--model.policy.model={a.model}",
              f"--data.val={a.preflight_split}", f"--model.sampling.val_group_size={PREFLIGHT_G}",
              *a.set, "--save", str(folder / "signals.pt")], folder / "preflight.log")
    summary = torch.load(folder / "signals.pt", weights_only=False)["summary"]
    reward, lead = summary["signals"]["reward"], summary["headroom"]
    result = {"settings": settings, "greedy": summary["greedy_accuracy"],
              "mean": summary["sample_accuracy"], "maj": summary["majority_accuracy"],
              "auc": reward.auc, "auc_low": reward.low, "auc_high": reward.high,
              "lead": None if lead is None else [lead.lead, lead.low, lead.high],
              "verdict": verdict(summary, summary["greedy_accuracy"])}
    done.write_text(json.dumps(result, indent=1))
    return result


def _training(settings: dict) -> dict:
    """The settings a run's training depends on (not the split it is evaluated on)."""
    return {k: v for k, v in settings.items() if k != "split"}


def _reset(folder: Path) -> None:
    """An empty ``folder`` for a run, without what an earlier run there left: its logs, and its
    evaluations and their logs beside it (``s0-eval-...``), which would otherwise be reused."""
    shutil.rmtree(folder, ignore_errors=True)
    for stale in folder.parent.glob(f"{folder.name}-*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    folder.mkdir(parents=True)


def train(v: Variant, seed: int, a: argparse.Namespace, folder: Path) -> dict:
    """``main.py fit`` of one run from scratch; the checkpoints it is evaluated from, without
    reward state, beside ``folder``."""
    _reset(folder)
    print(f"  start {v.name} seed {seed}", flush=True)
    fit_s = run_main(fit_args(v, seed, a, folder), folder.parent / f"{folder.name}.fit.log")
    strip_reward_state(folder / "checkpoints" / "last.ckpt",
                       folder.parent / f"{folder.name}.eval.ckpt")
    best = folder / "checkpoints" / "best.ckpt"
    strip_reward_state(best, folder.parent / f"{folder.name}.best.ckpt")
    return {"variant": v.name, "seed": seed, "settings": a.settings, "fit_s": fit_s,
            "best_step": checkpoint_record(best, "")["step"]}


def run_variant(v: Variant | None, seed: int, a: argparse.Namespace) -> dict:
    """Train (unless ``v`` is None: the warm baseline) and evaluate one run on ``a.split``;
    cached: a run trained under the same settings is evaluated, not retrained, and an
    evaluation already on disk is read back."""
    folder = a.out / "runs" / (v.name if v else "warm") / f"s{seed}"
    done = folder / "result.json"
    result = json.loads(done.read_text()) if done.exists() and not a.fresh else None
    if result is None or _training(result["settings"]) != _training(a.settings):
        if v is None:
            _reset(folder)
            result = {"variant": "warm", "seed": seed, "settings": a.settings, "fit_s": 0.0}
        else:
            result = train(v, seed, a, folder)
        done.write_text(json.dumps(result, indent=1))
    result["settings"] = a.settings
    checkpoints = {"eval": folder.parent / f"{folder.name}.eval.ckpt",
                   "best": folder.parent / f"{folder.name}.best.ckpt"} if v else {"eval": None}
    for kind, ckpt in checkpoints.items():
        out = eval_folder(folder, kind, a)
        if not (out / "predictions.jsonl").exists():
            shutil.rmtree(out, ignore_errors=True)
            result[f"{kind}_s"] = run_main(eval_args(a, out, ckpt),
                                           folder.parent / f"{out.name}.log")
    result["curves"], result["step_s"] = curves(folder) if v else ({}, None)
    result |= evaluations(folder, a, v is not None)
    print(f"  done  {result['variant']} seed {seed}: accuracy {result['eval']['accuracy']:.3f}, "
          f"fit {result['fit_s'] / 60:.1f} min", flush=True)
    return result


# ---- the plan ------------------------------------------------------------------------------
def planned_seconds(v: Variant | None, a: argparse.Namespace) -> float:
    evals = a.val_n * RECORD_S  # one held-out evaluation
    if v is None:
        return START_S + evals
    return (3 * START_S + a.steps * STEP_S * STEP_COST.get(v.name, 1.0)
            + (a.steps // a.val_every + 1) * a.select_n * RECORD_S + 2 * evals)


def makespan(costs: list[float], jobs: int) -> float:
    """Wall time of running ``costs`` longest first on ``jobs`` workers (what the pool does)."""
    load = [0.0] * jobs
    for cost in sorted(costs, reverse=True):
        load[load.index(min(load))] += cost
    return max(load, default=0.0)


# ---- the experiment --------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="warm:small", help="the warm start (a policy.model spec)")
    p.add_argument("--steps", type=int, default=150, help="SR-MCR optimizer steps per run")
    p.add_argument("--val-every", type=int, help="validate every N steps (default steps / 4)")
    p.add_argument("--val-n", type=int, help="records of --split (default 256: a standard error "
                   "of ~3 points per run; 1024: ~1.5; finished runs are evaluated, not retrained), "
                   "also the pre-flight's")
    p.add_argument("--split", default=HELD_OUT, help="the shapes split runs are evaluated on: "
                   "heldout to report, val to tune (never tune on heldout)")
    p.add_argument("--select", default="val", help="the labelled shapes split runs validate on "
                   "during training (the curves, best.ckpt); not --split: use test when tuning "
                   "on val")
    p.add_argument("--select-n", type=int, default=128, help="records of --select")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the main variant; the others "
                   "run the first")
    p.add_argument("--every-seed", default="srmcr", help="variants that run every seed "
                   "(comma-separated; the others run the first)")
    p.add_argument("--variants", default=",".join(all_variants()),
                   help="comma-separated, from: " + ", ".join(all_variants()))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a main.py override for every training run, e.g. --set "
                   "model.sampling.group_size=8 (repeatable; tune on --split val)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (1 torch thread each)")
    p.add_argument("--out", type=Path, default=ROOT / "lightning_logs" / "toy_world")
    p.add_argument("--png", type=Path, help="the plot (default docs/toy_world.png; --quick: "
                   "<out>/toy_world.png)")
    p.add_argument("--fresh", action="store_true", help="rerun finished runs too")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its budget, run "
                   "nothing")
    p.add_argument("--quick", action="store_true", help="plumbing check: warm:tiny, 2 steps, "
                   "8 records, SR-MCR only, 1 seed")
    a = p.parse_args(argv)
    if a.quick:
        a.model, a.steps, a.select_n, a.seeds, a.variants = "warm:tiny", 2, 8, "0", "srmcr"
    a.val_n = a.val_n or (8 if a.quick else 256)
    a.val_every = a.val_every or max(1, a.steps // 4)
    a.seed_list = [int(s) for s in a.seeds.split(",")]
    a.variant_list = [n.strip() for n in a.variants.split(",") if n.strip()]
    unknown = sorted(set(a.variant_list) - set(all_variants()))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(all_variants())}")
    if a.select == a.split:
        p.error(f"--select {a.select} is the split the runs are evaluated on: the best "
                f"checkpoint would be chosen on its own test set; pick another (e.g. --select "
                f"{'test' if a.split == 'val' else 'val'})")
    a.split_name = a.split
    a.split = f"shapes:{a.split_name}?n={a.val_n}"
    a.select = f"shapes:{a.select}?n={a.select_n}"
    a.preflight_split = a.split  # the evaluation's questions
    a.set = [f"--{kv.removeprefix('--')}" for kv in a.set]
    if any("=" not in kv for kv in a.set):
        p.error(f"--set takes KEY=VALUE (got {a.set})")
    a.settings = {"model": a.model, "steps": a.steps, "val_every": a.val_every, "split": a.split,
                  "select": a.select}
    if a.set:  # keys the cached results: runs under other overrides are not reused
        a.settings["set"] = a.set
    a.png = a.png or (a.out / "toy_world.png" if a.quick else ROOT / "docs" / "toy_world.png")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    variants = {n: v for n, v in all_variants().items() if n in a.variant_list}
    every = {n.strip() for n in a.every_seed.split(",")}
    plan = [(v, s) for v in variants.values() for s in (a.seed_list if v.name in every
                                                         else a.seed_list[:1])]
    costs = {(v.name, s): planned_seconds(v, a) for v, s in plan}
    planned = planned_seconds(None, a) + makespan(list(costs.values()), a.jobs)
    print(f"toy world: {a.model}, {len(plan)} training runs of {a.steps} steps + the warm "
          f"baseline, held-out {a.split}, validation on {a.select} every {a.val_every} steps, "
          f"{a.jobs} at once (1 torch thread each); planned ~{planned / 60:.0f} min at "
          f"{STEP_S} s/step, {RECORD_S} s/evaluated record, {START_S:.0f} s/process start "
          f"(+ ~5 min once if {a.model} is not cached yet)", flush=True)
    if a.dry_run:
        for (name, seed), cost in sorted(costs.items(), key=lambda kv: -kv[1]):
            print(f"  {name} seed {seed}: ~{cost / 60:.1f} min")
        return {"planned_s": planned, "runs": [f"{n} seed {s}" for n, s in costs]}
    start = time.monotonic()
    write_no_cooling(a.out)
    results = [run_variant(None, 0, a)]  # alone first: builds the warm model if not cached
    failed = []
    with ThreadPoolExecutor(a.jobs) as pool:
        checks_job = pool.submit(preflight, a)  # beside the runs: it is one more job
        order = sorted(plan, key=lambda p: -costs[(p[0].name, p[1])])
        futures = [(v, s, pool.submit(run_variant, v, s, a)) for v, s in order]
        for v, s, future in futures:
            try:
                results.append(future.result())
            except (RuntimeError, OSError) as error:  # one broken run must not lose the others
                failed.append(f"{v.name} seed {s}")
                print(error, file=sys.stderr)
    checks = checks_job.result()
    print(f"  pre-flight: greedy {checks['greedy']:.3f}, mean@{PREFLIGHT_G} {checks['mean']:.3f}, "
          f"maj@{PREFLIGHT_G} {checks['maj']:.3f}, reward AUC {checks['auc']:.3f}", flush=True)
    order = ["warm", *variants]
    results.sort(key=lambda r: (order.index(r["variant"]), r["seed"]))
    return report(a, variants, results, failed, time.monotonic() - start, planned, checks)


def report(a: argparse.Namespace, variants: dict[str, Variant], results: list[dict],
           failed: list[str], wall: float, planned: float, checks: dict) -> dict:
    """Print and write the table, the JSON of every number, and the plot."""
    rows = aggregate(results)
    labels = {"warm": f"warm start ({a.model}, before training)",
              **{n: v.label for n, v in variants.items()}}
    title = (f"toy world: {a.model} -> {a.steps} label-free steps; held-out {a.split}, "
             f"selection {a.select}; seeds {a.seeds} ({a.every_seed}), {a.seed_list[0]} "
             f"(others); {os.cpu_count()} CPU cores")
    warm = next((r for r in results if r["variant"] == "warm"), None)
    tracking = "" if warm is None else (
        "\n\nDo the cues track correctness? Correlation of each cue's score with being correct, "
        "over the warm start's held-out completions: " + ", ".join(
            f"{c} {x:+.2f}" if x is not None else f"{c} –"
            for c, x in warm["eval"]["correlation_with_correct"].items()))
    G = PREFLIGHT_G
    sampled = f", {' '.join(a.set)}" if a.set else ""
    lead = "" if not checks.get("lead") else (  # paired maj - greedy; absent from older results
        " (maj - greedy {:+.3f} [{:+.3f}, {:+.3f}])".format(*checks["lead"]))
    premise = (f"\n\nPre-flight of the warm start ({a.preflight_split}, G = {G}, T = 1{sampled}): "
               f"greedy {checks['greedy']:.3f}, mean@{G} {checks['mean']:.3f}, maj@{G} "
               f"{checks['maj']:.3f}{lead}, reward AUC {checks['auc']:.3f} "
               f"[{checks['auc_low']:.3f}, {checks['auc_high']:.3f}]. {checks['verdict']}")
    md = (f"{title}\n\n{table(rows, labels)}{premise}{tracking}\n\naccuracy (last): the last "
          f"checkpoint's on {a.split}; adapter: the best checkpoint by val/accuracy on {a.select} "
          f"(what AdapterExport writes to adapter/; step 0, the warm start itself, included), "
          f"evaluated on {a.split}; fixed/broken (p): per seed, the {a.split} questions its "
          f"adapter answers right and the warm start wrong, the reverse, and the exact McNemar "
          f"p-value of the difference; accuracy and flawed (last checkpoint): mean ± std over "
          f"seeds; "
          f"cues: the five SR-MCR cues scoring every variant's greedy completions; KL: the "
          f"per-token KL to the warm start over the last 10% of training steps; fit min: "
          f"training + in-run validation per run; this invocation {wall / 60:.1f} min "
          f"(planned {planned / 60:.0f}; runs reused from an earlier one cost nothing)"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    print("\n" + md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "toy_world.md").write_text(md + "\n")
    summary = {"title": title, "settings": a.settings, "wall_s": wall, "planned_s": planned,
               "planning": {"step_s": STEP_S, "record_s": RECORD_S, "start_s": START_S},
               "failed": failed, "rows": rows, "runs": results, "preflight": checks,
               "variants": {n: asdict(v) for n, v in variants.items()}}
    (a.out / "toy_world.json").write_text(json.dumps(summary, indent=1))
    try:
        plot(results, variants, a.png, title)
    except ImportError:
        print("no matplotlib: no plot (pip install -e '.[bench]')")
    return summary


if __name__ == "__main__":
    main()
