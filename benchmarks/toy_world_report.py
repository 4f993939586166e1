"""The toy-world experiment's report: seeds aggregated, the markdown table, the plot.

Plain data in: the runs' ``result.json`` dicts that ``benchmarks/toy_world.py`` writes (rerunning
that command with the same settings reuses them, so it re-tables and re-plots in seconds).
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

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


def aggregate(results: list[dict]) -> list[dict]:
    """One row per variant, in the order first seen: means (and spreads) over its seeds, and each
    seed's adapter paired with the warm start (``mcnemar``) where the runs kept their answers."""
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
        out.append({"variant": name, "seeds": [r["seed"] for r in runs], "accuracy": acc,
                    "accuracy_sd": acc_sd, "best_accuracy": best, "best_accuracy_sd": best_sd,
                    "best_steps": [r["best_step"] for r in runs if "best_step" in r],
                    "paired": [mcnemar(warm, r["eval_best"]["correct"]) for r in runs
                               if warm and "correct" in r.get("eval_best", {})],
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


def table(rows: list[dict], labels: dict[str, str]) -> str:
    """The markdown table: one row per variant, the warm start's first."""
    warm = next((r["accuracy"] for r in rows if r["variant"] == "warm"), None)
    cues = list(rows[0]["cues"])
    head = ["variant", "seeds", "accuracy (last)", "Δ vs warm", "adapter (best on select)",
            "Δ vs warm", "best at step", "adapter vs warm: fixed/broken (p)", "format",
            *(SHORT.get(c, c) for c in cues), "flawed", "KL", "fit min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        trained = r["variant"] != "warm"

        def delta(x: float | None) -> str:
            return "" if not trained or warm is None or x is None else _num(x - warm, signed=True)
        cells = [labels.get(r["variant"], r["variant"]), str(len(r["seeds"])),
                 _num(r["accuracy"], r["accuracy_sd"]), delta(r["accuracy"]),
                 _num(r["best_accuracy"], r["best_accuracy_sd"]) if trained else "",
                 delta(r["best_accuracy"]), ", ".join(map(str, r["best_steps"])),
                 "; ".join(f"{f}/{b} ({p:.2g})" for f, b, p in r["paired"]),
                 _num(r["format_rate"]), *(_num(r["cues"][c]) for c in cues),
                 _num(r["flaw_rate"], r["flaw_rate_sd"]), _num(r.get("kl")),
                 "" if not trained else f"{r['fit_min']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
                 "ls": "--" if v.group == "recipe" else "-",
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
