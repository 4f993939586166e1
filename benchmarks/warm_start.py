"""Does a warm start meet label-free training's premise? Greedy, mean@G and maj@G per question type.

    .venv/bin/python -m benchmarks.warm_start                  # warm:small on shapes:heldout
    .venv/bin/python -m benchmarks.warm_start --model warm:small-v3 --split val --n 128

Label-free rewards sharpen what the model already believes, so they can lift greedy accuracy only
where the majority answer of G samples beats a single greedy answer (``maj@G >= greedy``). This
prints, for one model and one split of the shapes world, the greedy accuracy, the accuracy of a
sample at T (mean@G) and of the majority answer (maj@G), overall and per question template, with
blank images as the control (what the model answers without looking), and the criterion fixed
before any training result (docs/warm_starts.md): greedy >= 55% on ``shapes:heldout`` and
maj@8 >= greedy. ``main.py preflight`` gives the same three accuracies plus the reward's AUC;
this script splits them by question type, which is what tells a perception gap (counting) from a
format or prompt one.

Two knobs ask whether the model's errors are noise that a majority averages out or a bias that
every sample shares: ``--top-p``/``--top-k`` sample only among the tokens the model nearly ties
on (the decisions greedy makes), and ``--views K`` answers greedily on K copies of each image
shifted by up to ``--shift`` pixels (other patch boundaries, the same scene) and takes their
majority (``maj-view``). When neither majority beats greedy, the errors are systematic and no
consensus reward can fix them. ``--contrast A`` asks whether the model's own image-versus-blank
contrast knows better than its greedy answer (visual contrastive decoding, Leng et al., 2023:
what a visual-grounding reward would pull the policy toward); slow, a forward pass per token.

    .venv/bin/python -m benchmarks.warm_start --split val --n 512 --no-blank --top-p 0.7
    .venv/bin/python -m benchmarks.warm_start --split val --n 512 --no-blank --views 8
    .venv/bin/python -m benchmarks.warm_start --split val --n 256 --no-blank --contrast 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.records import fit_pixels  # noqa: E402
from srmcr import policy, prompts  # noqa: E402
from srmcr.answers import is_correct  # noqa: E402
from srmcr.cues.answer_agreement import answer_key, group_votes  # noqa: E402
from srmcr.evaluation import generate_greedy  # noqa: E402
from srmcr.logprobs import mean_colour_blank  # noqa: E402
from srmcr.parsing import parse  # noqa: E402
from srmcr.rollout import SamplingArgs, _generation_config, sample  # noqa: E402
from toyworld.shapes import make_record  # noqa: E402

PIXELS = 112 * 112  # configs/tiny.yaml's images: 16 image tokens


def majority(answers: list[str | None]) -> str | None:
    """The most frequent answer key of a group (first seen wins a tie); None if none answered."""
    keys = [answer_key(a) for a in answers]
    votes = group_votes(keys, len(keys))[2][0].tolist()
    best = max((i for i, k in enumerate(keys) if k is not None), key=lambda i: (votes[i], -i),
               default=None)
    return None if best is None else answers[best]


def shifted_view(image: Image.Image, rng: random.Random, shift: int) -> Image.Image:
    """``image`` moved by up to ``shift`` pixels each way (uniform integers from ``rng``) on its
    own background (its top-left pixel): the same scene, seen through other patch boundaries."""
    dx, dy = rng.randint(-shift, shift), rng.randint(-shift, shift)
    canvas = Image.new(image.mode, image.size, image.getpixel((0, 0)))
    canvas.paste(image, (dx, dy))
    return canvas


def contrastive_greedy(model, processor, images: list[Image.Image], questions: list[str],
                       args: SamplingArgs, alpha: float, beta: float = 0.1) -> list[str]:
    """Greedy completions under visual contrastive decoding: each token maximizes
    (1 + alpha) log p(t | image) - alpha log p(t | blank) among the tokens with p(t | image) >=
    beta * max p(t | image) (VCD's plausibility cut), the blank from ``mean_colour_blank`` (same
    size: the same prompt tokens). alpha = 0 is greedy decoding. No KV cache: each step runs
    both prompts in full, which keeps it short and obviously right, and slow."""
    tokenizer = processor.tokenizer
    config = _generation_config(args, 1.0, tokenizer, model.get_output_embeddings().weight.shape[0])
    end, pad = config.eos_token_id, config.pad_token_id
    text = prompts.render(processor, questions, args.system_prompt)
    encs = [processor(text=text, images=list(ims), return_tensors="pt", padding=True)
            for ims in (images, [mean_colour_blank(im) for im in images])]
    ids, mask, mm = encs[0]["input_ids"], encs[0]["attention_mask"], encs[0]["mm_token_type_ids"]
    done = torch.zeros(len(questions), dtype=torch.bool)
    out: list[Tensor] = []
    for _ in range(args.max_new_tokens):
        logp = [model(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm,
                      pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"]
                      ).logits[:, -1].float().index_fill(
                          -1, torch.tensor(config.suppress_tokens), float("-inf")).log_softmax(-1)
                for enc in (encs if alpha else encs[:1])]
        score = logp[0]
        if alpha:
            plausible = logp[0] >= logp[0].amax(-1, keepdim=True) + math.log(beta)
            score = torch.where(plausible, (1 + alpha) * logp[0] - alpha * logp[1], -math.inf)
        token = torch.where(done, pad, score.argmax(-1))
        out.append(token)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        mm = torch.cat([mm, torch.zeros_like(token)[:, None]], 1)
        done |= torch.isin(token, torch.tensor(end))
        if done.all():
            break
    texts = []
    for row in torch.stack(out, 1).tolist():
        stop = next((i for i, t in enumerate(row) if t in end), len(row))
        texts.append(tokenizer.decode(row[:stop], skip_special_tokens=True))
    return texts


def probe(model_spec: str, split: str, n: int, group: int, temperature: float, batch: int,
          blank: bool = True, top_p: float = 1.0, top_k: int = 0, views: int = 0,
          shift: int = 6, contrast: float = 0.0) -> dict:
    """Per question template and overall: greedy, blank-image greedy, mean@G and maj@G at
    (temperature, top_p, top_k); with ``views`` > 0 also the greedy accuracy on that many shifted
    copies of each image (``view``) and of their majority answer (``maj_view``); with
    ``contrast`` > 0 that of visual contrastive decoding at that alpha (``contrast``)."""
    model, processor = policy.load_policy(policy.PolicyArgs(model=model_spec, max_pixels=PIXELS,
                                                            min_pixels=56 * 56))
    model.eval()
    args = SamplingArgs(group_size=group, max_new_tokens=48, top_p=top_p, top_k=top_k,
                        system_prompt=prompts.TINY_SYSTEM_PROMPT)
    hits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for start in range(0, n, batch):
        records = [make_record(0, split, i) for i in range(start, min(n, start + batch))]
        images = [fit_pixels(r.image, 56 * 56, PIXELS) for r in records]
        questions = [r.question for r in records]
        with torch.no_grad():
            greedy = generate_greedy(model, processor, images, questions, args)
            sampled = sample(model, processor, images, questions, args, temperature)
            blanks = generate_greedy(model, processor, [Image.new("RGB", im.size, "white")
                                                        for im in images], questions, args) \
                if blank else greedy
            if views:
                rngs = [random.Random(f"{split}:{start + b}") for b in range(len(records))]
                shifted = generate_greedy(
                    model, processor, [shifted_view(im, rng, shift) for im, rng in
                                       zip(images, rngs) for _ in range(views)],
                    [q for q in questions for _ in range(views)], args)
            if contrast:
                contrasted = [parse(t).answer for t in
                              contrastive_greedy(model, processor, images, questions, args,
                                                 contrast)]
        for b, record in enumerate(records):
            answers = [p.answer for p in sampled.parsed[b * group:(b + 1) * group]]
            row = {"greedy": is_correct(greedy.parsed[b].answer, record.answer),
                   "blank": is_correct(blanks.parsed[b].answer, record.answer),
                   "mean": sum(is_correct(a, record.answer) for a in answers) / group,
                   "maj": is_correct(majority(answers), record.answer),
                   "well_formed": float(greedy.parsed[b].well_formed)}
            if views:
                seen = [p.answer for p in shifted.parsed[b * views:(b + 1) * views]]
                row |= {"view": sum(is_correct(a, record.answer) for a in seen) / views,
                        "maj_view": is_correct(majority(seen), record.answer)}
            if contrast:
                row["contrast"] = is_correct(contrasted[b], record.answer)
            for key in ("all", record.template):
                for name, value in row.items():
                    hits[key][name].append(float(value))
    return {key: {name: sum(v) / len(v) for name, v in cols.items()} | {"n": len(cols["greedy"])}
            for key, cols in hits.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="warm:small")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1: off)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k sampling (0: off)")
    parser.add_argument("--views", type=int, default=0, help="also answer greedily on this many "
                        "shifted copies of each image and take their majority (0: off)")
    parser.add_argument("--shift", type=int, default=6, help="largest shift of a view, pixels")
    parser.add_argument("--contrast", type=float, default=0.0, help="also decode greedily with "
                        "visual contrastive decoding at this alpha against a mean-colour blank "
                        "(0: off; a forward pass per token, slow)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-blank", action="store_true", help="skip the blank-image control")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    a = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.monotonic()
    result = probe(a.model, a.split, a.n, a.group, a.temperature, a.batch, not a.no_blank,
                   a.top_p, a.top_k, a.views, a.shift, a.contrast)
    print(f"{a.model} on shapes:{a.split} (n={a.n}, G={a.group}, T={a.temperature}, "
          f"top_p={a.top_p}, top_k={a.top_k}{f', contrast {a.contrast}' if a.contrast else ''}), "
          f"{time.monotonic() - start:.0f} s")
    views = f" {'view':>6} {'maj-view':>8}" if a.views else ""
    views += f" {'contrast':>8}" if a.contrast else ""
    print(f"{'template':<20} {'n':>4} {'greedy':>7} {'blank':>6} {'mean@G':>7} {'maj@G':>6}{views}")
    for key in ["all", *sorted(k for k in result if k != "all")]:
        r = result[key]
        views = f" {r['view']:>6.3f} {r['maj_view']:>8.3f}" if a.views else ""
        views += f" {r['contrast']:>8.3f}" if a.contrast else ""
        print(f"{key:<20} {r['n']:>4} {r['greedy']:>7.3f} {r['blank']:>6.3f} {r['mean']:>7.3f} "
              f"{r['maj']:>6.3f}{views}")
    r = result["all"]
    ok = r["greedy"] >= 0.55 and r["maj"] >= r["greedy"]
    print(f"premise (greedy >= 0.55 and maj@G >= greedy): {'holds' if ok else 'fails'} "
          f"(greedy {r['greedy']:.3f}, maj@G {r['maj']:.3f}, well-formed {r['well_formed']:.3f})")
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
