"""Cost of the text cues against one bare encoder pass (target: ratio <= 1.2).

    python -m benchmarks.reward_cost [--completions 32] [--group-size 4] [--repeats 7]

(a) ``encode_s``: one batched MiniLM pass over the step's distinct texts (the floor: the texts
    must be embedded once anyway);
(b) ``cues_s``: the four text cues through ``SelfReward.score`` (prime once, cues hit the cache);
(c) ``reward_s``: (b) plus aggregation (``SelfReward.forward``);
(d) ``overhead_s``: (b) with every text already cached: the cues' own cost, which unlike (a)-(c)
    hardly moves with the load of a shared machine.
``ratio`` = median over repeats of (b) / (a); times are medians over ``repeats``, after one
warm-up, interleaved so that all three see the same load. ``measure`` is importable
(``benchmarks/step_time.py``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch

from srmcr.parsing import parse
from srmcr.reward import SelfReward
from srmcr.rollout import Rollout

TEXT_CUES = ["semantic_alignment", "lexical_fidelity", "non_redundancy", "step_consistency"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
PLACES = ["top left", "top right", "centre", "bottom left", "bottom right", "left edge"]
STEPS = [
    "I scan the image from left to right and look for every {c} {s}.",
    "There is a {c} {s} near the {p}, and it is clearly visible.",
    "Another {c2} {s2} sits at the {p2}, but it does not match the question.",
    "The {s} at the {p} is {c}, so it counts towards the total.",
    "I check the {p2} again to make sure no {c} {s} is hidden behind the {s2}.",
    "Counting carefully, I find {n} {c} {s}s in the whole picture.",
    "The shapes do not overlap, so each {s} is counted exactly once.",
]


def synthetic_completions(n: int, group_size: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(questions, completions) of about 64 tokens each, varied steps, G per question."""
    rng = random.Random(seed)
    questions, completions = [], []
    for _ in range(n // group_size):
        c, s = rng.choice(COLOURS), rng.choice(SHAPES)
        question = f"How many {c} {s}s are in the image?"
        for _ in range(group_size):
            fill = dict(c=c, s=s, p=rng.choice(PLACES), c2=rng.choice(COLOURS),
                        s2=rng.choice(SHAPES), p2=rng.choice(PLACES), n=rng.randint(1, 5))
            steps = [t.format(**fill) for t in rng.sample(STEPS, rng.randint(2, 4))]
            think = "\n".join(f"Step {i + 1}: {t}" for i, t in enumerate(steps))
            questions.append(question)
            completions.append(f"<think>{think}</think><answer>{fill['n']}</answer>")
    return questions, completions


def make_rollout(questions: list[str], texts: list[str], group_size: int) -> Rollout:
    n = len(texts)
    mask = torch.ones(n, 64, dtype=torch.long)
    return Rollout(group_size=group_size, questions=questions, texts=texts,
                   parsed=[parse(t) for t in texts], prompt_ids=torch.zeros(n, 1, dtype=torch.long),
                   prompt_mask=torch.ones(n, 1, dtype=torch.long),
                   mm_token_type_ids=torch.zeros(n, 1, dtype=torch.long),
                   completion_ids=torch.zeros_like(mask), completion_mask=mask,
                   truncated=torch.zeros(n, dtype=torch.bool), temperature=1.0, images=[],
                   pixel_values=torch.zeros(0, 1),
                   image_grid_thw=torch.zeros(0, 3, dtype=torch.long))


def _interleaved_times(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Seconds per repeat of each fn, run in turn within a repeat so that they see the same
    machine load (CI machines are shared); one warm-up round first."""
    for fn in fns:
        fn()  # model load, allocator, tokenizer caches
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def measure(num_completions: int = 32, group_size: int = 4, repeats: int = 7,
            threads: int | None = 2, encoder_model: str | None = None) -> dict[str, float]:
    """Median seconds of (a) one encoder pass, (b) the four text cues, (c) the reward forward."""
    if threads is not None:
        torch.set_num_threads(threads)
    reward = SelfReward(cues=TEXT_CUES, encoder_model=encoder_model)
    rollout = make_rollout(*synthetic_completions(num_completions, group_size), group_size)
    distinct = list(dict.fromkeys(t for cue in reward.cues.values() for t in cue.texts(rollout)
                                  if t.strip()))
    encode, cues, full = _interleaved_times(
        [lambda: reward.encoder._encode(distinct), lambda: reward.score(rollout),
         lambda: reward(rollout)], repeats)
    with reward.encoder.step(distinct):  # an open outer step: score() finds every text cached
        (overhead,) = _interleaved_times([lambda: reward.score(rollout)], repeats)
    words = [len(t.split()) for t in rollout.texts]
    return {"completions": num_completions, "distinct_texts": len(distinct),
            "mean_words": sum(words) / len(words), "encode_s": statistics.median(encode),
            "cues_s": statistics.median(cues), "overhead_s": statistics.median(overhead),
            "reward_s": statistics.median(full),
            "ratio": statistics.median(c / e for c, e in zip(cues, encode))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    r = measure(args.completions, args.group_size, args.repeats, args.threads)
    print(f"{r['completions']} completions (~{r['mean_words']:.0f} words), "
          f"{r['distinct_texts']} distinct texts, torch threads {torch.get_num_threads()}")
    print(f"(a) one batched encoder pass : {r['encode_s'] * 1e3:8.1f} ms")
    print(f"(b) four text cues, shared    : {r['cues_s'] * 1e3:8.1f} ms")
    print(f"(c) SelfReward.forward        : {r['reward_s'] * 1e3:8.1f} ms")
    print(f"(d) cues, encoder cached      : {r['overhead_s'] * 1e3:8.1f} ms")
    print(f"ratio (b)/(a)                 : {r['ratio']:8.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
