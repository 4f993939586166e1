"""The report of ``benchmarks/vs_trl.py``: the machine, the versions, and per-step figures."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

PHASES = ("generate", "policy pass", "blank-image pass", "reference pass", "reward", "update",
          "other")


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                  .splitlines() if ln.startswith("model name")), platform.processor())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({model}), load average {load}, {platform.platform()}"


def versions() -> str:
    from importlib.metadata import version
    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft", "trl"))


def summary(runs: list[dict]) -> dict:
    steps = [r for run in runs for r in run["steps"]]
    total = sum(r["step"] for r in steps)
    tokens = sum(r["tokens"] for r in steps)
    completions = sum(r["completions"] for r in steps)
    median = statistics.median
    return {"step": median(r["step"] for r in steps), "cpu": median(r["cpu"] for r in steps),
            "run_medians": [median(r["step"] for r in run["steps"]) for run in runs],
            "phases": {p: median(r["phases"][p] for r in steps) for p in PHASES},
            "tokens_per_s": tokens / total, "mean_len": tokens / completions,
            "truncated": sum(r["truncated"] for r in steps) / completions,
            "rss": max(run["peak_rss_mb"] for run in runs)}


def report(results: dict[str, dict[str, list[dict]]], max_new_tokens: int) -> None:
    print("\n| reward | trainer | median step s (run medians) | srmcr / TRL | CPU s/step "
          "| srmcr / TRL (CPU) | completion tok/s | mean completion len | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    stats = {reward: {side: summary(runs) for side, runs in sides.items()}
             for reward, sides in results.items()}
    for reward, sides in stats.items():
        ratio = sides["srmcr"]["step"] / sides["trl"]["step"]
        cpu_ratio = sides["srmcr"]["cpu"] / sides["trl"]["cpu"]
        for side, st in sides.items():
            spread = ", ".join(f"{m:.2f}" for m in st["run_medians"])
            mine = side == "srmcr"
            print(f"| {reward} | {side} | {st['step']:.3f} ({spread}) | "
                  f"{f'**{ratio:.2f}x**' if mine else ''} | {st['cpu']:.3f} | "
                  f"{f'{cpu_ratio:.2f}x' if mine else ''} | {st['tokens_per_s']:.0f} | "
                  f"{st['mean_len']:.1f} / {max_new_tokens} | {st['rss']:.0f} |")
    print("\nMedian seconds per phase (other = step minus the named phases):\n")
    columns = [(reward, side) for reward, sides in stats.items() for side in sides]
    print("| phase | " + " | ".join(f"{side} ({reward})" for reward, side in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for phase in PHASES:
        print(f"| {phase} | " + " | ".join(
            f"{stats[reward][side]['phases'][phase]:.3f}" for reward, side in columns) + " |")
    for reward, sides in stats.items():
        print(f"\n{reward}: completions without an end token: srmcr "
              f"{sides['srmcr']['truncated']:.0%}, TRL {sides['trl']['truncated']:.0%}")
        ratios = round_ratios(sides)
        if len(ratios) > 1:
            print(f"{reward}: srmcr / TRL round by round: {', '.join(f'{r:.2f}' for r in ratios)}"
                  f" (range {min(ratios):.2f}-{max(ratios):.2f}; a change smaller than that range "
                  "needs more rounds to show)")


def round_ratios(sides: dict[str, dict]) -> list[float]:
    """srmcr's run median over TRL's, for each ABBA round (its two runs ran back to back, so
    a drift of the machine's load hits both): the spread of these is the comparison's noise."""
    return [a / b for a, b in zip(sides["srmcr"]["run_medians"], sides["trl"]["run_medians"])]


def report_scaling(reward: str, results: dict[int, dict[str, list[dict]]]) -> None:
    """Step time against G (``--group-sizes``): one row per G, both trainers."""
    print(f"\nStep time against G ({reward} reward; median over steps, runs in brackets):\n")
    print("| G | srmcr s | TRL s | srmcr / TRL | srmcr CPU s | TRL CPU s | srmcr / TRL (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for g, sides in results.items():
        st = {side: summary(runs) for side, runs in sides.items()}
        runs = {side: ", ".join(f"{m:.2f}" for m in s["run_medians"]) for side, s in st.items()}
        print(f"| {g} | {st['srmcr']['step']:.3f} ({runs['srmcr']}) | {st['trl']['step']:.3f} "
              f"({runs['trl']}) | **{st['srmcr']['step'] / st['trl']['step']:.2f}x** | "
              f"{st['srmcr']['cpu']:.3f} | {st['trl']['cpu']:.3f} | "
              f"{st['srmcr']['cpu'] / st['trl']['cpu']:.2f}x |")
