"""Search for the tally world's warm start: build a candidate with the given knobs, then measure
what label-free training could gain from it on the dev split of both levels.

    .venv/bin/python -m benchmarks.tally_warm_search --out lightning_logs/tally_warm/e \
        --vision-steps 1000 --lm-steps 6000 --no-align --vision-scale 4   # ~75 min on 2 cores
    .venv/bin/python -m benchmarks.tally_warm_search --out lightning_logs/tally_warm/e --probe-only

A build is what ``warm:<name>`` builds from a recipe with these knobs (``toyworld.warmup.build``
on ``toyworld.sources.warm_data`` and ``warm_vision_data``): the vision tower on each image
token's cell, colour and kind (``--no-align``: without pulling the tokens toward the words'
embeddings), then the language model on clean base-level traces, seeded, written to
``<out>/model`` (a model folder ``--model.policy.model`` loads). The probe reads ``--n`` dev
questions per level: greedy accuracy, the mean accuracy of ``--group`` samples at
``--temperature``, their majority's accuracy, and the majority's paired lead over greedy with its
standard error: the premise of label-free training (errors that vary between samples) holds
where the lead is clearly positive. docs/tally_world.md records the candidates tried.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srmcr import prompts  # noqa: E402
from srmcr.answers import is_correct  # noqa: E402
from srmcr.cues.answer_agreement import answer_key, majority_agreement  # noqa: E402
from srmcr.evaluation import generate_greedy  # noqa: E402
from srmcr.policy import PolicyArgs, load_policy  # noqa: E402
from srmcr.rollout import SamplingArgs, sample  # noqa: E402
from srmcr.sources import DEFAULT_CACHE  # noqa: E402
from srmcr.validity import majority_correct  # noqa: E402
from toyworld import tally, warmup  # noqa: E402
from toyworld.recipes import WarmRecipe  # noqa: E402
from toyworld.sources import warm_data, warm_vision_data  # noqa: E402

PIXELS = 112 * 112


def build(out: Path, vision_steps: int, lm_steps: int, batch: int, lr: float, base: str,
          align: bool, vision_scale: float | None) -> Path:
    """The candidate as ``warm:<name>`` would build it from a recipe with these knobs (its
    world's traces and perception targets, ``toyworld.sources``), written to ``<out>/model``:
    a candidate worth keeping becomes a recipe in ``toyworld/recipes.py`` as it is."""
    recipe = WarmRecipe(steps=lm_steps, batch_size=batch, lr=lr, warmup_steps=30, minutes=0,
                        base=base, vision_steps=vision_steps, vision_align=align,
                        vision_scale=vision_scale, clean=1.0, world="tally")
    vision = warm_vision_data(recipe) if vision_steps else None
    out.mkdir(parents=True, exist_ok=True)
    return warmup.build("tally-search", out / "model", warm_data(recipe), DEFAULT_CACHE,
                        recipe=recipe, vision_data=vision)


def probe(model_dir: str, level: str, split: str, n: int, group: int, temperature: float,
          max_new: int, batch: int = 16, top_p: float = 1.0) -> dict:
    model, processor = load_policy(PolicyArgs(model=model_dir, max_pixels=PIXELS,
                                              min_pixels=56 * 56))
    model.eval()
    args = SamplingArgs(group_size=group, max_new_tokens=max_new, top_p=top_p,
                        system_prompt=prompts.TINY_SYSTEM_PROMPT)
    rows = []
    for start in range(0, n, batch):
        recs = [tally.make_record(0, split, i, level) for i in range(start, min(n, start + batch))]
        images, questions = [r.image for r in recs], [r.question for r in recs]
        with torch.no_grad():
            greedy = generate_greedy(model, processor, images, questions, args)
            sampled = sample(model, processor, images, questions, args, temperature)
        keys = [answer_key(p.answer) for p in sampled.parsed]
        right = torch.tensor([bool(is_correct(p.answer, recs[i // group].answer))
                              for i, p in enumerate(sampled.parsed)])
        maj = majority_correct(majority_agreement(keys, group), right, group)
        for b, r in enumerate(recs):
            rows.append({"greedy": float(is_correct(greedy.parsed[b].answer, r.answer)),
                         "mean": right[b * group:(b + 1) * group].float().mean().item(),
                         "maj": float(maj[b]),
                         "wf": float(greedy.parsed[b].well_formed),
                         "trunc": float(greedy.truncated[b])})
            if start == 0 and b < 2:
                print("Q:", r.question, "A:", r.answer, "\nG:", greedy.texts[b],
                      "\nS:", sampled.texts[b * group], flush=True)
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    lead = [r["maj"] - r["greedy"] for r in rows]
    m = sum(lead) / len(lead)
    sd = (sum((x - m) ** 2 for x in lead) / (len(lead) - 1)) ** 0.5
    out |= {"lead": m, "lead_se": sd / len(lead) ** 0.5, "n": n}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder of the build (<out>/model)")
    p.add_argument("--vision-steps", type=int, default=800, help="vision tower steps (0: none)")
    p.add_argument("--lm-steps", type=int, default=1500, help="language-model warm-up steps")
    p.add_argument("--batch", type=int, default=8, help="traces per warm-up step")
    p.add_argument("--lr", type=float, default=7e-4, help="warm-up learning rate")
    p.add_argument("--base", default="small", help="the tiny:<base> it starts from")
    p.add_argument("--no-align", action="store_true", help="do not align the vision tokens "
                   "with the words' embeddings")
    p.add_argument("--vision-scale", type=float, default=None, help="standardize the vision "
                   "features to this many times the text embeddings' std (default: leave them)")
    p.add_argument("--n", type=int, default=256, help="dev questions per level")
    p.add_argument("--group", type=int, default=8, help="samples per question")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new", type=int, default=96, help="new tokens per completion")
    p.add_argument("--probe-only", action="store_true", help="probe <out>/model, build nothing")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    model = a.out / "model"
    if not a.probe_only:
        model = build(a.out, a.vision_steps, a.lm_steps, a.batch, a.lr, a.base,
                      align=not a.no_align, vision_scale=a.vision_scale)
    print(f"build {time.time() - t0:.0f}s", flush=True)
    for level in ("base", "frontier"):
        t1 = time.time()
        r = probe(str(model), level, "dev", a.n, a.group, a.temperature, a.max_new,
                  top_p=a.top_p)
        print(level, json.dumps({k: round(v, 3) for k, v in r.items()}),
              f"{time.time() - t1:.0f}s", flush=True)


if __name__ == "__main__":
    main()
