"""Does label-free training help? Warm start -> evaluate -> SR-MCR without labels -> evaluate.

    .venv/bin/python -m benchmarks.toy_world                 # everything: about an hour on 2 cores
    .venv/bin/python -m benchmarks.toy_world --quick         # plumbing check on warm:tiny, ~35 s
    .venv/bin/python -m benchmarks.toy_world --variants srmcr,no_cooling --seeds 0 --steps 40

The issue's experiment (the controls, SR-MCR and MM-UPT on 3 seeds, SR-MCR without
``step_consistency``; 1024 held-out questions) in each world, and its plan for both:

    .venv/bin/python -m benchmarks.toy_world --preset issue --world shapes
    .venv/bin/python -m benchmarks.toy_world --preset issue --world tally
    .venv/bin/python -m benchmarks.toy_world --preset issue --dry-run      # minutes, both worlds

``--preset issue`` is ``--variants oracle,random,srmcr,mm_upt,no_step_consistency --every-seed
srmcr,mm_upt --seeds 0,1,2 --val-n 1024`` (options given beside it win).

Worlds (``--world``, benchmarks/toy_worlds.py): ``shapes``, single-read questions from
``warm:small``, selection on ``shapes:val``, reported on ``shapes:heldout``; ``tally``, adding up
the sides of the shapes of one colour (toyworld/tally.py) from ``warm:tally``, which learned the
base level: every ``main.py`` call adds ``-c configs/tally.yaml``, selection on the frontier's
``tally:val?level=frontier``, the report on ``tally:heldout?level=frontier``, and a retention
split, ``tally:heldout?level=base`` (the warm-up's difficulty: does training on the frontier
forget it?), evaluated for the warm start and every checkpoint. ``--level base`` trains, selects
and reports on the base level instead (the warm start's own difficulty; no retention split).
Each world keeps its results under its own ``--out`` (``lightning_logs/toy_world``,
``lightning_logs/toy_world_tally``, ``lightning_logs/toy_world_tally_base``), and the world keys
the cache, so one world's runs are never reused for the other.

Every run trains from the warm start (shipped, or built and cached on first use) through the
real entry point, ``main.py fit -c configs/tiny.yaml [-c configs/tally.yaml] -c <overlays> ...``
in a subprocess, with its seed (``seed_everything`` and the data shuffle) and its log folder under
``--out``, validating every quarter of the run on a labelled selection split (``--select``, the
curves, and ``best.ckpt``, which is what a user's ``adapter/`` is exported from). The evaluation
is ``main.py predict`` on a held-out split that nothing else uses (``--split heldout``), greedy:
before training the warm model itself (its LoRA adapter starts at zero), after it each run's last
checkpoint and its best checkpoint on the selection split (the exported adapter; one kept at
step 0 is the warm start itself, whose evaluation it reuses). The scorer is
always the five SR-MCR cues, whatever reward the run trained on (the checkpoint's reward state is
dropped: it does not change what the model generates), so the cue columns compare; the retention
split is scored for accuracy and flaws only. Labels enter only the accuracy, except in the
``oracle`` control. A completion is flawed when ``toyworld.flaws`` finds a loop, a hallucinated
shape or a contradiction in its steps (shapes), or ``toyworld.tally.check_trace`` any slip
(tally), judged against the record.

Variants: ``srmcr`` (configs/recipes/srmcr.yaml; every ``--seeds``); the controls ``oracle`` (the
reward is exact match with the record's label, ``benchmarks.rewards:oracle``, no cues: can the
loop learn at all in this many steps?) and ``random`` (``benchmarks.rewards:random_reward``, no
cues: does a "gain" appear without signal?); the ablations ``no_<cue>``, ``no_cooling`` (no
ConfidenceCooling: T = 1), ``no_reliability`` (fixed equal weights) and ``kl_0.1`` (β = 0.1
instead of 0.01: how much does holding the policy near the start matter) and ``lr_5e-4`` (a 5×
higher learning rate, the earlier default); the recipes ``mm_upt``, ``vision_sr1_labelfree``,
``srmcr_plus``; all but ``--every-seed`` run the first seed only. Each run uses 1 torch thread
(at 2, OpenMP spin-waiting on the 2-core machine makes steps several times slower), ``--jobs`` at
once. A finished run keeps its ``result.json`` and checkpoints and is reused under the same
training settings (``--fresh`` reruns), so an interrupted experiment resumes, and evaluating
finished runs on more questions (``--val-n 1024``) trains nothing again. Writes
``<out>/toy_world.md`` (the table, the pre-flight, and a verdict line against the issue's criteria
on the last checkpoints, the step fixed in advance: ``toy_world_report.criteria``),
``<out>/toy_world.json`` (every number) and the plot (``--png``, default docs/toy_world.png,
docs/toy_world_tally.png; needs matplotlib).
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.toy_world_report import (  # noqa: E402
    aggregate,
    criteria,
    markdown,
    plot,
    preflight_result,
)
from benchmarks.toy_worlds import (  # noqa: E402
    BUDGET_MIN,
    START_S,
    WORLDS,
    makespan,
    plan_line,
    planned_seconds,
    preflight_seconds,
    summarize,
)
from callbacks.best import checkpoint_record  # noqa: E402
from toyworld import tally  # noqa: E402

BASE, SRMCR = "configs/tiny.yaml", "configs/recipes/srmcr.yaml"
_REWARD = yaml.safe_load((ROOT / SRMCR).read_text())["model"]["reward"]
CUES: list[str] = _REWARD["init_args"]["cues"]  # the main variant's, and every evaluation's
COOLING, NO_COOLING = "callbacks.cooling.ConfidenceCooling", "no_cooling.yaml"
HELD_OUT = "heldout"  # a split no config, test or warm-up uses: nothing was ever tuned on it
PREFLIGHT_G = 8  # the pre-flight of the warm start samples G completions per held-out question
# The retention evaluation needs accuracy and flaws only, but main.py predict scores every
# completion with the config's reward: one cue that costs nothing (the SR-MCR cues are about a
# third of an evaluation's time).
ACCURACY_ONLY = ("--model.reward.init_args.cues=[answer_support]",)
# The run list: the controls, SR-MCR and MM-UPT on every seed, SR-MCR without the cue
# that reads the process (step_consistency), each evaluated on 1024 held-out questions.
PRESETS = {"issue": {"variants": "oracle,random,srmcr,mm_upt,no_step_consistency",
                     "every_seed": "srmcr,mm_upt", "seeds": "0,1,2", "val_n": 1024}}
EVALUATED_ON = ("split", "retention")  # settings a run's training does not depend on
NO_CUES = "--model.reward.init_args.cues=[]"
ORACLE = "{path: benchmarks.rewards:oracle, uses_labels: true}"
RANDOM = "{path: benchmarks.rewards:random_reward}"


@dataclass(frozen=True)
class Variant:
    name: str
    group: Literal["main", "control", "ablation", "recipe"]
    label: str  # the table's row name
    overlays: tuple[str, ...] = (SRMCR,)
    overrides: tuple[str, ...] = ()
    cooling: bool = True


def all_variants() -> dict[str, Variant]:
    out = [Variant("srmcr", "main", "SR-MCR"),
           # The controls (benchmarks/rewards.py) in the benchmark only, never a config default.
           Variant("oracle", "control", "oracle (reward: the label)", overrides=(
               NO_CUES, f"--model.reward.init_args.functions=[{ORACLE}]")),
           Variant("random", "control", "random reward", overrides=(
               NO_CUES, f"--model.reward.init_args.functions=[{RANDOM}]"))]
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


def _configs(a: argparse.Namespace, *overlays: str) -> list[str]:
    """``-c`` for tiny.yaml, the world's overlay, then ``overlays``."""
    return [x for o in (BASE, *a.world.overlays, *overlays) for x in ("-c", o)]


def fit_args(v: Variant, seed: int, a: argparse.Namespace, folder: Path) -> list[str]:
    overlays = [*v.overlays, *([] if v.cooling else [str(a.out / NO_COOLING)])]
    return ["fit", *_configs(a, *overlays), *v.overrides,
            f"--model.policy.model={a.model}", f"--seed_everything={seed}", f"--data.seed={seed}",
            f"--trainer.max_steps={a.steps}", f"--trainer.val_check_interval={a.val_every}",
            f"--data.val={a.select}", "--model.sampling.val_group_size=0", *a.set,
            *_logger(folder)]


@dataclass(frozen=True)
class Evaluation:
    """One greedy evaluation of a run: its result's key, which checkpoint, on which split."""

    key: str  # eval, eval_best (the adapter), retention, retention_best
    checkpoint: Literal["eval", "best"]  # the last checkpoint (or the warm start), the best
    split: str
    tag: str  # names its folder: the split and its size
    scored: bool  # the SR-MCR cues score its completions (else accuracy and flaws only)


def evaluations_of(a: argparse.Namespace, trained: bool) -> list[Evaluation]:
    """The report split for the last (or warm) and best checkpoints, and the retention split
    for each where the world has one."""
    kinds = ("eval", "best") if trained else ("eval",)
    out = [Evaluation("eval" if k == "eval" else "eval_best", k, a.split,
                      f"{a.split_name}{a.val_n}", True) for k in kinds]
    if a.retention:
        out += [Evaluation("retention" if k == "eval" else "retention_best", k, a.retention,
                           f"{a.split_name}-retention{a.val_n}", False) for k in kinds]
    return out


def eval_args(a: argparse.Namespace, folder: Path, ckpt: Path | None,
              e: Evaluation) -> list[str]:
    scorer = () if e.scored else ACCURACY_ONLY
    return ["predict", *_configs(a, SRMCR), *scorer, f"--model.policy.model={a.model}",
            f"--data.predict={e.split}", *_logger(folder),
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


def eval_folder(folder: Path, e: Evaluation) -> Path:
    """Where ``main.py predict`` writes one evaluation of a run: named by the checkpoint and the
    split, so evaluating finished runs on another split (``--val-n 1024``) keeps the earlier
    ones (the shapes world's names are those of the runs before worlds existed)."""
    return folder.with_name(f"{folder.name}-{e.checkpoint}-{e.tag}")


def evaluations(folder: Path, a: argparse.Namespace, trained: bool) -> dict:
    """Summaries: ``eval`` of the last checkpoint (or of the warm start), ``eval_best`` of the
    best checkpoint by the selection split, the adapter a user gets (trained runs only), and
    ``retention``, ``retention_best`` of the same on the retention split (if the world has one)."""
    return {e.key: summarize(eval_folder(folder, e) / "predictions.jsonl", e.split, a.world,
                             CUES if e.scored else ())
            for e in evaluations_of(a, trained)}


def curves(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """(optimizer steps done, value): ``val/accuracy`` after each validation, and the raw reward
    of each step's rollouts (``train/reward_raw``, sampled after ``step`` updates); and the
    median seconds between steps (what a world's ``step_s`` plans with)."""
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
    maj@8's paired lead over greedy, the SR-MCR reward's AUC and every signal's best-of-8 margin
    over greedy (``margins``: [lead, low, high], paired, 95% interval); cached per world."""
    import torch

    folder = a.out / "preflight"
    done = folder / "result.json"
    settings = {"world": a.world.name, "model": a.model, "split": a.preflight_split,
                "group_size": PREFLIGHT_G, "set": a.set}
    if done.exists() and not a.fresh:
        cached = json.loads(done.read_text())
        if _same(cached["settings"], settings) and "margins" in cached:
            return cached
    folder.mkdir(parents=True, exist_ok=True)
    run_main(["preflight", *_configs(a, SRMCR), f"--model.policy.model={a.model}",
              f"--data.val={a.preflight_split}", f"--model.sampling.val_group_size={PREFLIGHT_G}",
              *a.set, "--save", str(folder / "signals.pt")], folder / "preflight.log")
    summary = torch.load(folder / "signals.pt", weights_only=False)["summary"]
    result = preflight_result(summary, settings)
    done.write_text(json.dumps(result, indent=1))
    return result


def _same(cached: dict, settings: dict, ignore: tuple[str, ...] = ()) -> bool:
    """Whether cached settings are ``settings``, but for the keys ``ignore``; results cached
    before worlds existed are the shapes world's."""
    def key(s: dict) -> dict:
        return {"world": "shapes", **{k: v for k, v in s.items() if k not in ignore}}
    return key(cached) == key(settings)


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
    if result is None or not _same(result["settings"], a.settings, EVALUATED_ON):
        if v is None:
            _reset(folder)
            result = {"variant": "warm", "seed": seed, "settings": a.settings, "fit_s": 0.0}
        else:
            result = train(v, seed, a, folder)
        done.write_text(json.dumps(result, indent=1))
    result["settings"] = a.settings
    checkpoints = {"eval": folder.parent / f"{folder.name}.eval.ckpt",
                   "best": folder.parent / f"{folder.name}.best.ckpt"} if v else {"eval": None}
    for e in evaluations_of(a, v is not None):
        out = eval_folder(folder, e)
        if (out / "predictions.jsonl").exists():
            continue
        shutil.rmtree(out, ignore_errors=True)
        twin = _warm_twin(a, e) if e.checkpoint == "best" and result["best_step"] == 0 else None
        if twin is not None:  # the adapter kept step 0, the warm start itself (LoRA B = 0)
            out.mkdir(parents=True)
            shutil.copy(twin, out / "predictions.jsonl")
        else:
            result[f"{e.key}_s"] = run_main(eval_args(a, out, checkpoints[e.checkpoint], e),
                                            folder.parent / f"{out.name}.log")
    result["curves"], result["step_s"] = curves(folder) if v else ({}, None)
    result |= evaluations(folder, a, v is not None)
    print(f"  done  {result['variant']} seed {seed}: accuracy {result['eval']['accuracy']:.3f}, "
          f"fit {result['fit_s'] / 60:.1f} min", flush=True)
    return result


def _warm_twin(a: argparse.Namespace, e: Evaluation) -> Path | None:
    """The warm start's predictions on ``e``'s split, if evaluated under these settings: what a
    best checkpoint at step 0 answers, token for token."""
    warm = a.out / "runs" / "warm" / "s0"
    done = eval_folder(warm, replace(e, checkpoint="eval")) / "predictions.jsonl"
    if not (done.exists() and (warm / "result.json").exists()):
        return None
    settings = json.loads((warm / "result.json").read_text())["settings"]
    return done if _same(settings, a.settings, EVALUATED_ON) else None


# ---- the plan ------------------------------------------------------------------------------
def schedule(a: argparse.Namespace) -> tuple[dict[str, Variant], list[tuple[Variant, int]],
                                             dict[tuple[str, int], float], float]:
    """The variants asked for, the (variant, seed) runs, each run's planned seconds, and the
    planned wall seconds: the warm baseline alone, then the runs and the pre-flight on the
    pool."""
    variants = {n: v for n, v in all_variants().items() if n in a.variant_list}
    every = {n.strip() for n in a.every_seed.split(",")}
    plan = [(v, s) for v in variants.values() for s in (a.seed_list if v.name in every
                                                         else a.seed_list[:1])]
    costs = {(v.name, s): planned_seconds(v.name, a) for v, s in plan}
    planned = planned_seconds(None, a) + makespan([*costs.values(), preflight_seconds(a)],
                                                  a.jobs)
    return variants, plan, costs, planned


def dry_run(argv: list[str], a: argparse.Namespace) -> dict:
    """The plan of ``argv`` in every world, run by run, and both worlds' total against the
    issue's budget."""
    worlds = {}
    for name in [a.world.name] if a.level else WORLDS:  # a level is the tally world's alone
        b = a if name == a.world.name else parse_args([*argv, "--world", name])
        _, plan, costs, planned = schedule(b)
        print(plan_line(b, [v.name for v, _ in plan], planned))
        for (variant, seed), cost in sorted(costs.items(), key=lambda kv: -kv[1]):
            print(f"  {variant} seed {seed}: ~{cost / 60:.1f} min")
        worlds[name] = planned
    both = sum(worlds.values())
    print(f"{'both worlds' if len(worlds) > 1 else 'all'}: ~{both / 60:.0f} min planned, "
          f"against the issue's budget of "
          f"{BUDGET_MIN} min"
          + ("" if both <= 60 * BUDGET_MIN else f": OVER by ~{both / 60 - BUDGET_MIN:.0f} min")
          + " (adapters kept at step 0 reuse the warm start's evaluation: less)")
    _, plan, costs, planned = schedule(a)
    return {"planned_s": planned, "runs": [f"{n} seed {s}" for n, s in costs],
            "worlds_s": worlds, "both_s": both}


# ---- the experiment --------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", choices=list(WORLDS), default="shapes",
                   help="shapes: single-read questions; tally: adding up, trained on the "
                   "frontier, with a retention split at the warm-up's level")
    p.add_argument("--preset", choices=list(PRESETS), help="issue: " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in PRESETS["issue"].items())
        + " (options given beside it win)")
    p.add_argument("--level", choices=tally.LEVELS, help="tally only: the level trained on, "
                   "selected and reported on (default frontier, with base as retention split)")
    p.add_argument("--model", help="the warm start (a policy.model spec; default the world's: "
                   + ", ".join(f"{w.model} ({n})" for n, w in WORLDS.items()) + ")")
    p.add_argument("--steps", type=int, default=150, help="SR-MCR optimizer steps per run")
    p.add_argument("--val-every", type=int, help="validate every N steps (default steps / 4)")
    p.add_argument("--val-n", type=int, help="records of --split (default 256: a standard error "
                   "of ~3 points per run; 1024: ~1.5; finished runs are evaluated, not retrained), "
                   "also the pre-flight's and the retention split's")
    p.add_argument("--split", default=HELD_OUT, help="the world's split runs are evaluated on: "
                   "heldout to report, val to tune (never tune on heldout)")
    p.add_argument("--select", default="val", help="the world's labelled split runs validate on "
                   "during training (the curves, best.ckpt); not --split: use test when tuning "
                   "on val")
    p.add_argument("--select-n", type=int, default=128, help="records of --select")
    p.add_argument("--seeds", help="seeds of the --every-seed variants (default 0,1,2); the "
                   "others run the first")
    p.add_argument("--every-seed", help="variants that run every seed (comma-separated; "
                   "default srmcr; the others run the first)")
    p.add_argument("--variants", help="comma-separated (default all), from: "
                   + ", ".join(all_variants()))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a main.py override for every training run, e.g. --set "
                   "model.sampling.group_size=8 (repeatable; tune on --split val)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (1 torch thread each)")
    p.add_argument("--out", type=Path, help="default lightning_logs/toy_world (shapes), "
                   "lightning_logs/toy_world_tally (tally)")
    p.add_argument("--png", type=Path, help="the plot (default docs/toy_world.png, "
                   "docs/toy_world_tally.png; --quick: <out>/toy_world.png)")
    p.add_argument("--fresh", action="store_true", help="rerun finished runs too")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its budget in "
                   "every world, run nothing")
    p.add_argument("--quick", action="store_true", help="plumbing check: the world's test warm "
                   "start (warm:tiny, warm:tally-tiny), 2 steps, 8 records, 1 seed, SR-MCR "
                   "unless --variants says otherwise")
    a = p.parse_args(argv)
    a.world = WORLDS[a.world]
    if a.level and a.world.name != "tally":
        p.error("--level is the tally world's: add --world tally")
    if a.level == "base":  # train on the warm-up's own level, report there, nothing to retain
        a.world = replace(a.world, spec=a.world.spec.replace("frontier", "base"), retention=None)
        a.set = [*a.set, "data.train=tally:train?level=base"]
    for key, value in PRESETS.get(a.preset, {}).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.quick:
        a.model, a.steps, a.select_n = a.model or a.world.quick_model, 2, 8
        a.seeds, a.variants = a.seeds or "0", a.variants or "srmcr"
    a.model = a.model or a.world.model
    a.seeds, a.every_seed = a.seeds or "0,1,2", a.every_seed or "srmcr"
    a.variants = a.variants or ",".join(all_variants())
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
    a.split = a.world.split(a.split_name, a.val_n)
    a.select = a.world.split(a.select, a.select_n)
    a.retention = a.world.retention_split(a.split_name, a.val_n)
    a.preflight_split = a.split  # the evaluation's questions
    a.set = [f"--{kv.removeprefix('--')}" for kv in a.set]
    if any("=" not in kv for kv in a.set):
        p.error(f"--set takes KEY=VALUE (got {a.set})")
    a.settings = {"world": a.world.name, "model": a.model, "steps": a.steps,
                  "val_every": a.val_every, "split": a.split, "select": a.select}
    if a.retention:
        a.settings["retention"] = a.retention
    if a.set:  # keys the cached results: runs under other overrides are not reused
        a.settings["set"] = a.set
    suffix = ("" if a.world.name == "shapes" else f"_{a.world.name}") \
        + ("_base" if a.level == "base" else "")
    a.out = a.out or ROOT / "lightning_logs" / f"toy_world{suffix}"
    a.png = a.png or (a.out / "toy_world.png" if a.quick
                      else ROOT / "docs" / f"toy_world{suffix}.png")
    return a


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.dry_run:
        return dry_run(argv, a)
    variants, plan, costs, planned = schedule(a)
    print(plan_line(a, [v.name for v, _ in plan], planned), flush=True)
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
    """Print and write the table, the pre-flight, the verdict, the JSON of every number (every
    cue's pre-flight margin included), and the plot."""
    rows = aggregate(results)
    labels = {"warm": f"warm start ({a.model}, before training)",
              **{n: v.label for n, v in variants.items()}}
    title = (f"toy world ({a.world.name}): {a.model} -> {a.steps} label-free steps; held-out "
             f"{a.split}" + (f", retention {a.retention}" if a.retention else "")
             + f"; selection {a.select}; seeds {a.seeds} ({a.every_seed}), {a.seed_list[0]} "
             f"(others); {os.cpu_count()} CPU cores")
    sampled = f", {' '.join(a.set)}" if a.set else ""
    go = checks.get("go", checks["verdict"].startswith("GO"))  # older results lack "go"
    md = (markdown(rows, labels, checks, go, world=a.world.name, split=a.split, select=a.select,
                   retention=a.retention, preflight=(a.preflight_split, PREFLIGHT_G, sampled),
                   warm=next((r for r in results if r["variant"] == "warm"), None))
          + f"; this invocation {wall / 60:.1f} min (planned {planned / 60:.0f}; runs reused "
          f"from an earlier one cost nothing)" + (f"; FAILED: {', '.join(failed)}" if failed
                                                   else ""))
    md = f"{title}\n\n{md}"
    print("\n" + md)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "toy_world.md").write_text(md + "\n")
    w = a.world
    summary = {"title": title, "world": w.name, "settings": a.settings, "wall_s": wall,
               "planned_s": planned,
               "planning": {"step_s": w.step_s, "record_s": w.record_s,
                            "retention_record_s": w.retention_record_s,
                            "preflight_s": w.preflight_s, "start_s": START_S},
               "failed": failed, "rows": rows, "runs": results, "preflight": checks,
               "verdict": [asdict(c) for c in criteria(rows, go)],
               "variants": {n: asdict(v) for n, v in variants.items()}}
    (a.out / "toy_world.json").write_text(json.dumps(summary, indent=1))
    try:
        plot(results, variants, a.png, title)
    except ImportError:
        print("no matplotlib: no plot (pip install -e '.[bench]')")
    return summary


if __name__ == "__main__":
    main()
