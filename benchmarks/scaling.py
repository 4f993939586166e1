"""How an SR-MCR step grows with the group size G and with max_new_tokens, phase by phase.

    .venv-bench/bin/python -m benchmarks.scaling                       # table + docs/scaling.png
    .venv-bench/bin/python -m benchmarks.scaling --steps 4 --warmup 1 --json /tmp/scaling.json
    .venv-bench/bin/python -m benchmarks.scaling --replot /tmp/scaling.json

Points: G in {2, 4, 8, 16} at max_new_tokens 32, and max_new_tokens in {32, 64, 128} at G 4, on
``configs/tiny.yaml`` as it is (tiny:small, B = 4 prompts, the five cues, visual grounding's
blank-image pass included). Each point is ``benchmarks.step_time.measure`` in a fresh subprocess
(independent imports and peak memory); phases are medians over the timed steps, "other" is the
step's median minus the named phases. The plot needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srmcr.prompts import SYSTEM_PROMPT  # noqa: E402

CONFIG = "configs/tiny.yaml"
# Random tiny:small rarely ends early, so every point samples its max_new_tokens; the 60-token
# default system prompt (a real model's prompt is longer still, with hundreds of image tokens).
PINNED = ["--model.policy.model=tiny:small", f"--model.sampling.system_prompt={SYSTEM_PROMPT}"]
GROUP_SIZES = (2, 4, 8, 16)  # at max_new_tokens = FIXED_TOKENS
TOKENS = (32, 64, 128)  # at G = FIXED_G
FIXED_TOKENS, FIXED_G = 32, 4
# measure()'s phase names -> the plot's, in stacking order. Passes that run inside the reward
# (cues that ask the policy) are part of "reward" and not stacked again.
PHASES = {"generate": "generate", "log-probs (policy)": "policy pass",
          "log-probs (blank image)": "blank-image pass", "log-probs (reference)": "reference pass",
          "reward": "reward", "update": "update (loss fwd+bwd+optimizer)"}
COLOURS = ("#4c72b0", "#8172b3", "#64b5cd", "#55a868", "#ccb974", "#c44e52", "#bbbbbb")


def points() -> list[tuple[int, int]]:
    """(G, max_new_tokens) pairs, each measured once."""
    pairs = [(g, FIXED_TOKENS) for g in GROUP_SIZES] + [(FIXED_G, t) for t in TOKENS]
    return list(dict.fromkeys(pairs))


def measure_point(group_size: int, tokens: int, steps: int, warmup: int) -> dict:
    from benchmarks.step_time import measure

    result = measure(CONFIG, steps, warmup, [*PINNED, f"--model.sampling.group_size={group_size}",
                                             f"--model.sampling.max_new_tokens={tokens}"])
    phases = result["phases"]
    step = phases["step"]
    named = {label: phases.get(key, 0.0) for key, label in PHASES.items()}
    named["other"] = max(0.0, step - sum(named.values()))
    return {"G": group_size, "max_new_tokens": tokens, "step": step, "phases": named,
            "token_cap": result["tokens"], "peak_rss_mb": result["peak_rss_mb"]}


def spawn(group_size: int, tokens: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "benchmarks.scaling", "--point", str(group_size),
               str(tokens), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"G={group_size} T={tokens} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def table(results: list[dict]) -> None:
    labels = list(results[0]["phases"])
    print("| G | max_new_tokens | step s | " + " | ".join(labels) + " | peak RSS MB |")
    print("|---|---|---|" + "---|" * len(labels) + "---|")
    for r in results:
        print(f"| {r['G']} | {r['max_new_tokens']} | {r['step']:.2f} | "
              + " | ".join(f"{r['phases'][p]:.2f}" for p in labels)
              + f" | {r['peak_rss_mb']:.0f} |")


def plot(results: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("G", [r for r in results if r["max_new_tokens"] == FIXED_TOKENS],
               f"group size G (max_new_tokens = {FIXED_TOKENS})"),
              ("max_new_tokens", [r for r in results if r["G"] == FIXED_G],
               f"max_new_tokens (G = {FIXED_G})")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    labels = list(results[0]["phases"])
    for ax, (key, rows, xlabel) in zip(axes, panels):
        rows = sorted(rows, key=lambda r: r[key])
        xs = range(len(rows))
        bottom = [0.0] * len(rows)
        for label, colour in zip(labels, COLOURS):
            heights = [r["phases"][label] for r in rows]
            ax.bar(xs, heights, bottom=bottom, color=colour, width=0.6,
                   label=label if ax is axes[0] else None)
            bottom = [b + h for b, h in zip(bottom, heights)]
        for x, r, top in zip(xs, rows, bottom):
            ax.text(x, top, f"{r['step']:.2f} s", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(xs), [str(r[key]) for r in rows])
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("seconds per step (median)")
    fig.legend(loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 0.93))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.84))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: see benchmarks/vs_trl.py, Setup.threads)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/scaling.png")
    parser.add_argument("--json", type=Path, help="also save the raw results here")
    parser.add_argument("--replot", type=Path, help="plot saved results, measure nothing")
    parser.add_argument("--point", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        import torch
        torch.set_num_threads(args.threads)
        print("RESULT " + json.dumps(measure_point(*args.point, args.steps, args.warmup)))
        return
    if args.replot:
        saved = json.loads(args.replot.read_text())
        results, title = saved["results"], saved["title"]
    else:
        title = (f"SR-MCR step on {CONFIG} (tiny:small, B = 4, five cues), {os.cpu_count()} CPU "
                 f"cores, {args.threads} torch thread(s), {args.steps} steps after "
                 f"{args.warmup} warm-up")
        print(title)
        results = []
        for group_size, tokens in points():
            results.append(spawn(group_size, tokens, args))
            print(f"  G={group_size} max_new_tokens={tokens}: {results[-1]['step']:.2f} s/step",
                  flush=True)
        if args.json:
            args.json.write_text(json.dumps({"title": title, "results": results}, indent=1))
    table(results)
    try:
        plot(results, args.out, title)
    except ImportError:
        print("matplotlib is missing (pip install -e '.[bench]'): no plot")


if __name__ == "__main__":
    main()
