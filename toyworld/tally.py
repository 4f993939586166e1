"""The tally world: add up the sides of the shapes of one colour, one shape at a time.

Where the shapes world asks single-read questions (one glance decides "how many circles?"), here
every answer takes several steps: find each shape of the asked colour, name its kind, add its
sides (triangle 3, square 4, circle 0) to a running total. A trace lists the shapes in an order
drawn afresh for each example, so many reasoning paths lead to the one right answer, and a slip
on one path (a skipped or repeated shape, a misread kind, a wrong sum) lands on one of many wrong
totals: the answers range over 0..20 and more. That is the regime where a model's own majority
can be right more often than its greedy answer, which label-free training needs.

Scenes sit on a grid of 4 x 4 cells named ``A1`` (top left) .. ``D4`` (bottom right), letter the
column, number the row; at 112 pixels a cell is exactly one image token of Qwen2.5-VL (28 x 28
pixels), so reading one shape is one token's job and perception stays learnable for a tiny model.
Difficulty is the number of shapes in the scene: ``level=base`` is what the warm-up is taught,
``level=frontier`` one notch harder (more shapes, more of the asked colour).

Record ``index`` of ``split`` under ``seed`` and ``level`` is a pure function of those values, as
in the shapes world. A clean trace, e.g. for "How many sides do the red shapes have in total?":

    <think>Step 1: C2 square 4, total 4
    Step 2: A4 triangle 3, total 7
    Step 3: B1 circle 0, total 7</think><answer>7</answer>

    python -m toyworld.tally --level frontier --n 4      # print a few records with traces
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from toyworld.scene import COLOURS, DRAW, Scene, Shape

Level = Literal["base", "frontier"]
LEVELS: tuple[Level, ...] = get_args(Level)
GRID = 4  # cells per side: at 112 pixels, one cell per image token
SIDES = {"triangle": 3, "square": 4, "circle": 0}
TALLY_COLOURS = ("red", "green", "blue", "yellow")
# Shapes per scene at each level, and how many of them have the asked colour: the frontier has
# more of both, so its traces are longer and its totals larger than any the warm-up wrote.
SHAPES: dict[Level, tuple[int, int]] = {"base": (2, 6), "frontier": (8, 12)}
TARGETS: dict[Level, tuple[int, int]] = {"base": (1, 4), "frontier": (3, 5)}
NONE_SHARE = 0.1  # share of base questions about a colour the scene does not have (answer 0)
CELL_FILL = (0.7, 0.9)  # shape side as a share of its cell's side
TALLY_VERSION = 1  # bump when scenes, questions or traces change (it keys warm:tally's cache)


COLUMNS, ROWS = "ABCD", "1234"
# Each cell's background is tinted by its column and row, faintly (the shapes' colours are far
# from every tint): a vision tower has no absolute position, and a tiny one cannot infer it, so
# the tint is what tells a token which cell it shows, as the grid labels of a board would.
TINT_STEP = 20


def cell_name(row: int, col: int) -> str:
    return f"{COLUMNS[col]}{ROWS[row]}"


def background(row: int, col: int) -> tuple[int, int, int]:
    return (245 - TINT_STEP * col, 245 - TINT_STEP * row, 235)


def render(scene: Scene, size: int = 112) -> Image.Image:
    """The grid's tinted cells, then the shapes, without anti-aliasing."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    cell = size / GRID
    for row in range(GRID):
        for col in range(GRID):
            draw.rectangle((col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1),
                           fill=background(row, col))
    for s in scene.shapes:
        box = ((s.cx - s.size / 2) * size, (s.cy - s.size / 2) * size,
               (s.cx + s.size / 2) * size, (s.cy + s.size / 2) * size)
        DRAW[s.kind](draw, box, COLOURS[s.colour])
    return image


# What each image token shows, for the vision tower's pre-training (toyworld.vision_pretrain):
# its cell's column and row, and the colour and kind of the shape in it. Each channel is also a
# word, so the tower can be aligned with the language model's embeddings of those words.
TOKEN_WORDS = [*COLUMNS, *ROWS, *TALLY_COLOURS, *sorted(SIDES)]


def token_targets(record: "TallyRecord", size: int = 112) -> Tensor:
    """(GRID * GRID, len(TOKEN_WORDS)) 0/1 targets, tokens in row-major order; needs a
    ``size`` at which one cell is one image token (112 pixels: 28 x 28 per token)."""
    if size != 28 * GRID:
        raise ValueError(f"tally token targets need {28 * GRID}-pixel images, got {size}")
    targets = torch.zeros(GRID, GRID, len(TOKEN_WORDS))
    for row in range(GRID):
        for col in range(GRID):
            targets[row, col, COLUMNS.index(COLUMNS[col])] = 1
            targets[row, col, len(COLUMNS) + row] = 1
    offset = len(COLUMNS) + len(ROWS)
    for cell, shape in zip(record.cells, record.scene.shapes):
        col, row = COLUMNS.index(cell[0]), ROWS.index(cell[1])
        targets[row, col, offset + TALLY_COLOURS.index(shape.colour)] = 1
        targets[row, col, offset + len(TALLY_COLOURS) + sorted(SIDES).index(shape.kind)] = 1
    return targets.view(GRID * GRID, len(TOKEN_WORDS))


@dataclass(frozen=True)
class TallyRecord:
    image: Image.Image
    question: str
    answer: str
    id: str
    scene: Scene
    colour: str  # the colour the question asks about
    cells: tuple[str, ...]  # (shapes,) the cell of each shape of the scene, in scene order

    def targets(self) -> list[tuple[str, Shape]]:
        """(cell, shape) of every shape of the asked colour, in scene order."""
        return [(c, s) for c, s in zip(self.cells, self.scene.shapes) if s.colour == self.colour]


def sample_scene(rng: random.Random, level: Level) -> tuple[Scene, tuple[str, ...], str]:
    """A scene at ``level``, its shapes' cells, and the colour to ask about."""
    lo, hi = SHAPES[level]
    n = rng.randint(lo, hi)
    t_lo, t_hi = TARGETS[level]
    targets = min(rng.randint(t_lo, t_hi), n)
    if level == "base" and rng.random() < NONE_SHARE:
        targets = 0
    colour = rng.choice(TALLY_COLOURS)
    others = [c for c in TALLY_COLOURS if c != colour]
    colours = [colour] * targets + [rng.choice(others) for _ in range(n - targets)]
    rng.shuffle(colours)
    cells = rng.sample(range(GRID * GRID), n)
    shapes, names = [], []
    for cell, shape_colour in zip(cells, colours):
        row, col = divmod(cell, GRID)
        side = rng.uniform(*CELL_FILL) / GRID
        slack = (1 / GRID - side) / 2
        cx = (col + 0.5) / GRID + rng.uniform(-slack, slack)
        cy = (row + 0.5) / GRID + rng.uniform(-slack, slack)
        shapes.append(Shape(rng.choice(sorted(SIDES)), shape_colour, cx, cy, side))
        names.append(cell_name(row, col))
    return Scene(tuple(shapes)), tuple(names), colour


def make_record(seed: int, split: str, index: int, level: Level = "frontier",
                size: int = 112) -> TallyRecord:
    """Record ``index`` of ``split`` at ``level``: independent of every other record."""
    if level not in LEVELS:
        raise ValueError(f"unknown tally level {level!r}; one of {LEVELS}")
    rng = random.Random(f"tally:{seed}:{level}:{split}:{index}")
    scene, cells, colour = sample_scene(rng, level)
    answer = sum(SIDES[s.kind] for s in scene.shapes if s.colour == colour)
    question = f"How many sides do the {colour} shapes have in total?"
    return TallyRecord(render(scene, size), question, str(answer),
                       f"tally-{level}-{split}-{seed}-{index:06d}", scene, colour, cells)


def write_trace(record: TallyRecord, rng: random.Random) -> str:
    """A clean trace: the shapes of the asked colour in a random order, with a running total."""
    targets = record.targets()
    rng.shuffle(targets)
    if not targets:
        steps = [f"no {record.colour} shapes"]
    else:
        total, steps = 0, []
        for cell, shape in targets:
            total += SIDES[shape.kind]
            steps.append(f"{cell} {shape.kind} {SIDES[shape.kind]}, total {total}")
    lines = "\n".join(f"Step {k}: {step}" for k, step in enumerate(steps, start=1))
    return f"<think>{lines}</think><answer>{record.answer}</answer>"


def make_trace(seed: int, split: str, index: int, level: Level = "base",
               size: int = 112) -> tuple[TallyRecord, str]:
    """Record ``index`` and a clean trace for it (the order drawn from its own generator)."""
    record = make_record(seed, split, index, level, size)
    rng = random.Random(f"tally-trace:{seed}:{level}:{split}:{index}")
    return record, write_trace(record, rng)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m toyworld.tally",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="warmup")
    parser.add_argument("--level", choices=LEVELS, default="base")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for index in range(args.n):
        record, trace = make_trace(args.seed, args.split, index, args.level)
        print(f"# {record.id}: {record.question} -> {record.answer}\n{trace}\n")


if __name__ == "__main__":
    main()


_STEP = re.compile(r"^\s*([A-D][1-4])\s+(circle|square|triangle)\s+(\d+)\s*,\s*total\s+(\d+)\s*$")


def check_trace(record: TallyRecord, steps: Sequence[str], answer: str | None) -> dict[str, int]:
    """What a completion's steps get wrong about ``record``: counts of steps naming a cell
    that holds no shape of the asked colour (``wrong_cell``), a repeated cell (``repeat``), a
    wrong kind for a right cell (``misread``), wrong sides for the named kind (``sides``), a
    running total that is not the previous one plus the sides (``sum``), unparsable steps
    (``garbled``), target shapes never listed (``missed``), and an answer that is not the last
    total (``answer``)."""
    targets = {cell: shape for cell, shape in record.targets()}
    seen: set[str] = set()
    out = dict.fromkeys(("wrong_cell", "repeat", "misread", "sides", "sum", "garbled",
                         "missed", "answer"), 0)
    total = 0
    for step in steps:
        match = _STEP.match(step)
        if match is None:
            out["garbled"] += not step.strip().startswith("no ")
            continue
        cell, kind, sides, running = match.group(1), match.group(2), int(match.group(3)), \
            int(match.group(4))
        if cell in seen:
            out["repeat"] += 1
        elif cell not in targets:
            out["wrong_cell"] += 1
        elif targets[cell].kind != kind:
            out["misread"] += 1
        seen.add(cell)
        out["sides"] += sides != SIDES[kind]
        out["sum"] += running != total + sides
        total = running
    out["missed"] = len(set(targets) - seen)
    out["answer"] = int(answer is None or answer.strip() != str(total))
    return out
