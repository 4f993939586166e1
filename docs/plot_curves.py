"""Plot a run's TensorBoard scalars into one PNG (docs/results.md's picture of a tiny run).

    pip install matplotlib   # docs only, not a dependency of srmcr
    python docs/plot_curves.py lightning_logs/tiny/version_0 docs/tiny_run.png \
        --title "configs/tiny.yaml, 300 steps (tiny:small, random init)"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

CUES = ("semantic_alignment", "lexical_fidelity", "non_redundancy", "visual_grounding",
        "step_consistency")
# (panel title, [(tag, label)]): one line per tag that the run has.
PANELS = [
    ("validation (greedy, held out)", [("val/accuracy", "accuracy"),
                                        ("val/format_rate", "format rate")]),
    ("reward", [("train/reward_raw", "raw Σ w·s"), ("train/format_rate", "format rate")]),
    ("raw cue means (train)", [(f"train/reward/{c}", c) for c in CUES]),
    ("cue weights", [(f"train/weight/{c}", c) for c in CUES]),
    ("sampling temperature", [("train/temperature", "temperature")]),
    ("confidence (mean max-prob, T = 1)", [("train/confidence", "confidence"),
                                           ("train/confidence_ema", "EMA")]),
    ("policy update", [("train/kl", "KL to base"), ("train/clip_frac", "clip fraction")]),
    ("completion length (tokens)", [("train/completion_len", "train"),
                                    ("val/completion_len", "val")]),
    ("signal", [("train/frac_zero_std_groups", "zero-std groups"),
                ("train/collapse", "collapsed groups")]),
]
SHARES = {"validation (greedy, held out)", "signal"}  # panels of shares: y in [0, 1]


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's exponential smoothing."""
    out, last = [], values[0] if values else 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot(run: Path, out: Path, smoothing: float = 0.8, title: str | None = None) -> None:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    fig, axes = plt.subplots(3, 3, figsize=(15, 10.5), constrained_layout=True)
    for ax, (panel, lines) in zip(axes.flat, PANELS):
        for tag, label in lines:
            if tag not in tags:
                continue
            points = events.Scalars(tag)
            steps, values = [p.step for p in points], [p.value for p in points]
            if tag.startswith("val/") or len(values) < 10:
                ax.plot(steps, values, "o-", label=label)
            else:
                line, = ax.plot(steps, smooth(values, smoothing), label=label)
                ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set_title(panel)
        if panel in SHARES:
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title or f"srmcr: {run}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder with the run's events.out.tfevents file")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--smoothing", type=float, default=0.8)
    parser.add_argument("--title", help="figure title (default: the run folder)")
    args = parser.parse_args(argv)
    plot(args.run, args.out, args.smoothing, args.title)


if __name__ == "__main__":
    main(sys.argv[1:])
