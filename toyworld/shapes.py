"""The synthetic shapes world: deterministic scenes of coloured shapes with exact answers.

Record ``index`` of split ``split`` under ``seed`` is a pure function of those three values (its
random generator is seeded with the string ``f"{seed}:{split}:{index}"``, which Python hashes
with SHA-512, not with the per-process string hash), so the in-memory ``shapes:<split>`` source
and the files written by ``python -m toyworld.shapes`` hold the same data, and any record can
be produced without the ones before it. The world itself (``Shape``, ``Scene``, ``render``)
lives in ``toyworld.scene``, the question templates in ``toyworld.shapes_questions``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from toyworld.scene import COLOURS, KINDS, Scene, Shape, render, sample_scene
from toyworld.shapes_questions import TEMPLATES, ask

__all__ = ["COLOURS", "KINDS", "TEMPLATES", "Scene", "Shape", "ShapesRecord", "main",
           "make_record", "render", "sample_scene", "write_dataset"]


@dataclass(frozen=True)
class ShapesRecord:
    image: Image.Image  # RGB, size x size
    question: str
    answer: str
    id: str
    scene: Scene
    template: str  # which question template produced it (see shapes_questions.TEMPLATES)


def make_record(seed: int, split: str, index: int, size: int = 112) -> ShapesRecord:
    """Record ``index`` of ``split``: independent of every other record and of the process."""
    rng = random.Random(f"{seed}:{split}:{index}")
    scene = sample_scene(rng)
    template, question, answer = ask(scene, rng)
    return ShapesRecord(render(scene, size), question, answer,
                        f"shapes-{split}-{seed}-{index:06d}", scene, template)


def write_dataset(out: Path, n: int, seed: int = 0, split: str = "train", size: int = 112) -> Path:
    """Write ``out/data.jsonl`` and ``out/images/NNNNNN.png``; same arguments, same bytes."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "data.jsonl"
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for index in tqdm(range(n), desc=f"shapes:{split}", disable=n < 1000):
            record = make_record(seed, split, index, size)
            image = f"images/{index:06d}.png"
            # PIL writes no timestamp or other varying chunk into a PNG without pnginfo.
            record.image.save(out / image, format="PNG")
            row = {"image": image, "question": record.question, "answer": record.answer,
                   "id": record.id}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m toyworld.shapes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, required=True, help="number of records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="any name; each split is its own data")
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    args = parser.parse_args(argv)
    if args.n < 0 or args.size < 8:
        parser.error("--n must be >= 0 and --size >= 8")
    path = write_dataset(args.out, args.n, args.seed, args.split, args.size)
    print(f"wrote {args.n} records to {path}")


if __name__ == "__main__":
    main()
