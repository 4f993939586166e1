"""The toy-world experiment's report: seeds aggregated, the markdown table, the verdict, the plot.

Plain data in: the runs' ``result.json`` dicts that ``benchmarks/toy_world.py`` writes (rerunning
that command with the same settings reuses them, so it re-tables and re-plots in seconds).
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from benchmarks.toy_world import Variant


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [x for x in values if x is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def mcnemar(before: dict[str, bool], after: dict[str, bool]) -> tuple[int, int, float]:
    """(fixed, broken, p): questions wrong before and right after, the reverse, and the exact
    two-sided McNemar p-value (binomial, 1/2, on the questions that changed) of the difference.
    Paired, question by question: far more sensitive than comparing two accuracies."""
    if before.keys() != after.keys():
        raise ValueError(f"paired test over different questions ({len(before)} and {len(after)})")
    fixed = sum(after[q] and not before[q] for q in before)
    broken = sum(before[q] and not after[q] for q in before)
    n = fixed + broken
    tail = sum(math.comb(n, k) for k in range(min(fixed, broken) + 1)) / 2 ** n
    return fixed, broken, min(1.0, 2 * tail)


def paired_interval(before: dict[str, bool], afters: list[dict[str, bool]],
                    z: float = 1.96) -> tuple[float, float, float] | None:
    """(mean, low, high): the accuracy change from ``before`` to the mean of ``afters`` (one per
    seed), paired question by question, with a normal 95% interval over questions; None
    without runs or questions."""
    if not afters or not before:
        return None
    if any(after.keys() != before.keys() for after in afters):
        raise ValueError("paired interval over different questions")
    diffs = [statistics.fmean(float(a[q]) for a in afters) - float(before[q]) for q in before]
    mean = statistics.fmean(diffs)
    half = z * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    return mean, mean - half, mean + half


def aggregate(results: list[dict]) -> list[dict]:
    """One row per variant, in the order first seen: means (and spreads) over its seeds, and each
    seed's adapter and last checkpoint paired with the warm start (``mcnemar``, and the seeds'
    mean change with its interval, ``paired_interval``) where the runs kept their answers; the
    retention split's accuracies where the world has one."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        rows.setdefault(r["variant"], []).append(r)
    warm = rows.get("warm", [{}])[0].get("eval", {}).get("correct")
    out = []
    for name, runs in rows.items():
        ev = [r["eval"] for r in runs]
        acc, acc_sd = _mean_sd([e["accuracy"] for e in ev])
        flaw, flaw_sd = _mean_sd([e["flaw_rate"] for e in ev])
        fmt = _mean_sd([e["format_rate"] for e in ev])[0]
        best, best_sd = _mean_sd([r["eval_best"]["accuracy"] for r in runs if "eval_best" in r])
        retention, retention_sd = _mean_sd([r["retention"]["accuracy"] for r in runs
                                            if "retention" in r])
        trained = name != "warm" and warm is not None

        def correct(key: str) -> list[dict[str, bool]]:
            return [r[key]["correct"] for r in runs if "correct" in r.get(key, {})] \
                if trained else []
        out.append({"variant": name, "seeds": [r["seed"] for r in runs], "accuracy": acc,
                    "accuracy_sd": acc_sd, "best_accuracy": best, "best_accuracy_sd": best_sd,
                    "seed_accuracy": [e["accuracy"] for e in ev],
                    "seed_best_accuracy": [r["eval_best"]["accuracy"] for r in runs
                                           if "eval_best" in r],
                    "best_steps": [r["best_step"] for r in runs if "best_step" in r],
                    "paired": [mcnemar(warm, c) for c in correct("eval_best")],
                    "paired_last": [mcnemar(warm, c) for c in correct("eval")],
                    "interval": paired_interval(warm, correct("eval")) if trained else None,
                    "best_interval": paired_interval(warm, correct("eval_best"))
                    if trained else None,
                    "retention": retention, "retention_sd": retention_sd,
                    "best_retention": _mean_sd([r["retention_best"]["accuracy"] for r in runs
                                                if "retention_best" in r])[0],
                    "format_rate": fmt,
                    "cues": {c: _mean_sd([e["cues"][c] for e in ev])[0] for c in ev[0]["cues"]},
                    "flaw_rate": flaw, "flaw_rate_sd": flaw_sd,
                    "flaws": {f: _mean_sd([e["flaws"][f] for e in ev])[0] for f in ev[0]["flaws"]},
                    "kl": _mean_sd([_tail_mean(r.get("curves", {}).get("train/kl", []))
                                    for r in runs])[0],
                    "fit_min": statistics.fmean(r["fit_s"] for r in runs) / 60})
    return out


def _tail_mean(points: list[tuple[int, float]]) -> float | None:
    """Mean over the last 10% of a curve's points (the end of training, less noisy)."""
    if not points:
        return None
    return statistics.fmean(v for _, v in points[-max(1, len(points) // 10):])


def _num(x: float | None, sd: float | None = None, signed: bool = False) -> str:
    if x is None:
        return "–"
    text = f"{x:+.3f}" if signed else f"{x:.3f}"
    return text + (f" ± {sd:.3f}" if sd is not None else "")


SHORT = {"semantic_alignment": "sem. align.", "lexical_fidelity": "lex. fid.",
         "non_redundancy": "non-red.", "visual_grounding": "vis. ground.",
         "step_consistency": "step cons."}


def _pairs(paired: list[tuple[int, int, float]]) -> str:
    return "; ".join(f"{f}/{b} ({p:.2g})" for f, b, p in paired)


def table(rows: list[dict], labels: dict[str, str]) -> str:
    """The markdown table: one row per variant, the warm start's first; the retention split's
    columns where the runs have one."""
    warm = next((r for r in rows if r["variant"] == "warm"), {})
    cues = list(rows[0]["cues"])
    retention = any(r.get("retention") is not None for r in rows)
    head = ["variant", "seeds", "accuracy (last)", "Δ vs warm", "adapter (best on select)",
            "Δ vs warm", "best at step", "adapter vs warm: fixed/broken (p)",
            "last vs warm: fixed/broken (p)", "format", *(SHORT.get(c, c) for c in cues),
            "flawed", *(["retention (last)", "Δ vs warm", "retention (adapter)", "Δ vs warm"]
                        if retention else []), "KL", "fit min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        trained = r["variant"] != "warm"

        def delta(x: float | None, key: str = "accuracy") -> str:
            start = warm.get(key)
            return "" if not trained or start is None or x is None else _num(x - start,
                                                                            signed=True)
        cells = [labels.get(r["variant"], r["variant"]), str(len(r["seeds"])),
                 _num(r["accuracy"], r["accuracy_sd"]), delta(r["accuracy"]),
                 _num(r["best_accuracy"], r["best_accuracy_sd"]) if trained else "",
                 delta(r["best_accuracy"]), ", ".join(map(str, r["best_steps"])),
                 _pairs(r["paired"]), _pairs(r.get("paired_last", [])),
                 _num(r["format_rate"]), *(_num(r["cues"][c]) for c in cues),
                 _num(r["flaw_rate"], r["flaw_rate_sd"])]
        if retention:
            cells += [_num(r.get("retention"), r.get("retention_sd")),
                      delta(r.get("retention"), "retention"),
                      _num(r.get("best_retention")) if trained else "",
                      delta(r.get("best_retention"), "retention")]
        cells += [_num(r.get("kl")), "" if not trained else f"{r['fit_min']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flaw_kinds(rows: list[dict], labels: dict[str, str]) -> str:
    """One line per variant: the share of its last checkpoints' completions showing each kind
    of flaw (mean over seeds)."""
    return "\n".join(f"- {labels.get(r['variant'], r['variant'])}: " + ", ".join(
        f"{kind} {_num(rate)}" for kind, rate in r["flaws"].items()) for r in rows)


# ---- the verdict -------------------------------------------------------------------------------
# The criteria: the loop can learn (oracle), label-free training gains as much as it must
# (SR-MCR), no gain appears without signal (random), the frontier does not cost the warm-up's
# level (retention), and the pre-flight foretold the outcome.
ORACLE_GAIN = 0.10
SRMCR_GAIN, ORACLE_SHARE = 0.05, 0.5
RANDOM_BAND = 0.015
RETENTION_DROP = 0.02
Checkpoint = Literal["last", "adapter"]
_KEYS: dict[Checkpoint, tuple[str, str, str, str]] = {
    "last": ("accuracy", "seed_accuracy", "interval", "retention"),
    "adapter": ("best_accuracy", "seed_best_accuracy", "best_interval", "best_retention")}


@dataclass(frozen=True)
class Criterion:
    name: Literal["oracle", "srmcr", "random", "retention", "preflight"]
    met: bool | None  # None: not measured (its arm or split did not run)
    text: str


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def _srmcr(gain: float | None, per_seed: list[float], interval: tuple | None,
           oracle: float | None) -> Criterion:
    """SR-MCR's criterion: a mean ``gain`` of +5 points, every seed above the start, the paired
    interval above 0, and at least half the oracle's gain (where the oracle ran)."""
    need = (f"≥ {_pts(SRMCR_GAIN)}, every seed above the start, interval above 0, ≥ "
            f"{ORACLE_SHARE:.0%} of the oracle's")
    if gain is None:
        return Criterion("srmcr", None, f"SR-MCR – ({need})")
    lo, hi = (interval or (math.nan, math.nan, math.nan))[1:]
    share = "" if not oracle or oracle <= 0 else f", {gain / oracle:.0%} of the oracle's"
    met = (gain >= SRMCR_GAIN and all(x > 0 for x in per_seed) and lo > 0
           and (oracle is None or gain >= ORACLE_SHARE * oracle))
    return Criterion("srmcr", met, f"SR-MCR {_pts(gain)} (seeds {' '.join(map(_pts, per_seed))}"
                     f", paired 95% [{_pts(lo)}, {_pts(hi)}]{share}) ({need})")


def criteria(rows: list[dict], go: bool | None,
             checkpoint: Checkpoint = "last") -> list[Criterion]:
    """The issue's five criteria, judged on ``checkpoint`` (``last``: the step fixed in advance;
    ``adapter``: the best on the labelled selection split): gains are accuracy changes against
    the warm start, SR-MCR's the mean over its seeds. ``go``: the pre-flight's verdict (None:
    none). SR-MCR "gains" for the pre-flight's check when its paired interval is above 0."""
    by = {r["variant"]: r for r in rows}
    acc, seeds, interval, retention = _KEYS[checkpoint]
    warm = by.get("warm", {})

    def change(name: str, key: str, start: str) -> float | None:
        """``name``'s ``key`` minus the warm start's ``start``."""
        row = by.get(name, {})
        return None if row.get(key) is None or warm.get(start) is None \
            else row[key] - warm[start]
    oracle, srmcr, rand = (change(name, acc, "accuracy") for name in ("oracle", "srmcr", "random"))
    kept = None if srmcr is None else change("srmcr", retention, "retention")
    row = by.get("srmcr", {})
    gains = None if srmcr is None else (row[interval] or (0, math.nan))[1] > 0
    return [
        Criterion("oracle", None if oracle is None else oracle >= ORACLE_GAIN,
                  f"oracle {_pts(oracle)} (≥ {_pts(ORACLE_GAIN)})"),
        _srmcr(srmcr, [x - warm["accuracy"] for x in row.get(seeds, [])], row.get(interval),
               oracle),
        Criterion("random", None if rand is None else abs(rand) <= RANDOM_BAND,
                  f"random {_pts(rand)} (within ±{100 * RANDOM_BAND:.1f})"),
        Criterion("retention", None if kept is None else kept >= -RETENTION_DROP,
                  f"retention (SR-MCR) {_pts(kept)} (drop ≤ {100 * RETENTION_DROP:.1f})"),
        Criterion("preflight", None if go is None or gains is None else go == gains,
                  f"pre-flight {'–' if go is None else 'GO' if go else 'NO-GO'}, SR-MCR "
                  f"{'–' if gains is None else 'gains' if gains else 'does not gain'} "
                  "(GO ⇔ gains)")]


def verdict_line(world: str, rows: list[dict], go: bool | None,
                 checkpoint: Checkpoint = "last") -> str:
    """One line: each criterion with met / NOT met / not run, and the count met."""
    found = criteria(rows, go, checkpoint)
    mark = {True: "met", False: "NOT met", None: "not run"}
    judged = [c for c in found if c.met is not None]
    return (f"Verdict ({world} world, {checkpoint} checkpoints, points against the warm start): "
            + "; ".join(f"{c.text}: {mark[c.met]}" for c in found)
            + f" -> {sum(bool(c.met) for c in judged)} of {len(judged)} judged criteria met")


def preflight_result(summary: dict, settings: dict) -> dict:
    """The JSON-ready figures of a pre-flight ``summary`` (``srmcr.validity.summarize`` plus
    ``greedy_accuracy``)."""
    from srmcr.validity import verdict

    def interval(h) -> list[float] | None:  # a Headroom: [lead, low, high]
        return None if h is None else [h.lead, h.low, h.high]

    reward, text = summary["signals"]["reward"], verdict(summary, summary["greedy_accuracy"])
    return {"settings": settings, "greedy": summary["greedy_accuracy"],
            "mean": summary["sample_accuracy"], "maj": summary["majority_accuracy"],
            "auc": reward.auc, "auc_low": reward.low, "auc_high": reward.high,
            "lead": interval(summary["headroom"]),
            "margins": {name: interval(m) for name, m in (summary["margins"] or {}).items()},
            "go": text.startswith("GO"), "verdict": text}


def preflight_line(checks: dict, split: str, group_size: int, sampled: str = "") -> str:
    """The pre-flight's figures: greedy, mean@G, maj@G with maj@G - greedy, the reward's AUC and
    its best-of-G margin over greedy (paired, 95% intervals), and its verdict."""
    G = group_size

    def span(name: str, x: list[float] | None) -> str:
        return "" if not x else f", {name} {x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]"
    margin = (checks.get("margins") or {}).get("reward")
    return (f"Pre-flight of the warm start ({split}, G = {G}, T = 1{sampled}): greedy "
            f"{checks['greedy']:.3f}, mean@{G} {checks['mean']:.3f}, maj@{G} {checks['maj']:.3f}"
            + span("maj - greedy", checks.get("lead"))
            + span(f"reward best-of-{G} - greedy", margin)
            + f", reward AUC {checks['auc']:.3f} [{checks['auc_low']:.3f}, "
            f"{checks['auc_high']:.3f}]. {checks['verdict']}")


def markdown(rows: list[dict], labels: dict[str, str], checks: dict, go: bool | None, *,
             world: str, split: str, select: str, retention: str | None,
             preflight: tuple[str, int, str], warm: dict | None) -> str:
    """The report under its title: the table, the pre-flight (``preflight``: its split, G and
    the sampling overrides), the verdict, whether the cues track correctness on the warm
    start's completions (``warm``: its result), each flaw's share, and the legend."""
    tracking = "" if warm is None else (
        "\n\nDo the cues track correctness? Correlation of each cue's score with being correct, "
        "over the warm start's held-out completions: " + ", ".join(
            f"{c} {x:+.2f}" if x is not None else f"{c} –"
            for c, x in warm["eval"]["correlation_with_correct"].items()))
    return (f"{table(rows, labels)}\n\n{preflight_line(checks, *preflight)}\n\n"
            f"{verdict_line(world, rows, go)}{tracking}\n\nFlaws of the last checkpoints' "
            f"completions on {split} (share showing each):\n{flaw_kinds(rows, labels)}\n\n"
            f"accuracy (last): the last checkpoint's on {split}; adapter: the best checkpoint by "
            f"val/accuracy on {select} (what AdapterExport writes to adapter/; step 0, the warm "
            f"start itself, included), evaluated on {split}; fixed/broken (p): per seed, the "
            f"{split} questions its adapter (or last checkpoint) answers right and the warm "
            f"start wrong, the reverse, and the exact McNemar p-value of the difference; "
            f"accuracy and flawed (last checkpoint): mean ± std over seeds; "
            + (f"retention: accuracy on {retention}, the warm-up's level; " if retention else "")
            + "cues: the five SR-MCR cues scoring every variant's greedy completions; KL: the "
            "per-token KL to the warm start over the last 10% of training steps; fit min: "
            "training + in-run validation per run")


def _band(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float]]:
    """Mean and spread over seeds at the steps every seed has."""
    steps = sorted(set.intersection(*(set(s for s, _ in one) for one in series)))
    values = [[dict(one)[s] for one in series] for s in steps]
    return steps, [statistics.fmean(v) for v in values], \
        [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]


def _smooth(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    values = [v for _, v in points]
    return [(s, statistics.fmean(values[max(0, i - window + 1):i + 1]))
            for i, (s, _) in enumerate(points)]


def plot(results: list[dict], variants: dict[str, Variant], path: Path, title: str) -> None:
    """Accuracy on the selection split (the runs' own validations, step 0 the warm start) and the
    smoothed raw train reward over optimizer steps: SR-MCR as mean ± std over seeds, ablations
    solid, recipes dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = next((r["curves"]["val/accuracy"][0][1] for r in results  # step 0: the warm start,
                  if r["curves"].get("val/accuracy")), None)  # which every run validates first
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    window = max(1, max((r["settings"]["steps"] for r in results), default=1) // 20)
    colours = itertools.cycle(plt.get_cmap("tab20").colors)  # 13 variants besides SR-MCR
    for name, v in variants.items():
        runs = [r for r in results if r["variant"] == name]
        if not runs:
            continue
        main = v.group == "main"
        style = {"color": "black" if main else next(colours), "lw": 2.2 if main else 1.1,
                 "ls": {"recipe": "--", "control": ":"}.get(v.group, "-"),
                 "label": f"{v.label} (mean{' ± std' if main else ''}, {len(runs)} seeds)"
                 if len(runs) > 1 else v.label}
        for ax, tag in zip(axes, ("val/accuracy", "train/reward_raw")):
            series = [r["curves"][tag] for r in runs]
            if tag == "train/reward_raw":
                series = [_smooth(s, window) for s in series]
            steps, mean, sd = _band(series)
            ax.plot(steps, mean, **style)
            if main and len(runs) > 1:
                ax.fill_between(steps, [m - s for m, s in zip(mean, sd)],
                                [m + s for m, s in zip(mean, sd)], color="black", alpha=0.15)
    if start is not None:
        axes[0].axhline(start, color="grey", lw=0.8, ls=":", label="warm start")
    axes[0].set(xlabel="optimizer steps", ylabel="selection-split accuracy (greedy)")
    axes[1].set(xlabel="optimizer steps", ylabel=f"train/reward_raw (mean of {window} steps; "
                "each variant's own cues)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
