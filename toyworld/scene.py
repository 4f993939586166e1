"""The shapes world: typed scenes of coloured shapes, sampled without overlaps and rendered.

Coordinates are fractions of the image side, so one scene renders at any size. Shapes never
touch: answers about counts and positions can be checked on the pixels.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

Kind = Literal["circle", "square", "triangle"]
KINDS: tuple[Kind, ...] = ("circle", "square", "triangle")
Colour = Literal["red", "green", "blue", "yellow", "purple", "orange", "cyan"]
COLOURS: dict[Colour, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 80, 220),
    "yellow": (240, 200, 20), "purple": (140, 50, 170), "orange": (250, 130, 20),
    "cyan": (20, 200, 210),
}
BACKGROUND = (240, 240, 240)
MAX_SHAPES = 6
MIN_SIZE, MAX_SIZE = 0.12, 0.28  # shape side as a fraction of the image side
MARGIN = 0.04  # free space kept between bounding boxes, so no two shapes touch when rendered
AREA_FACTOR: dict[Kind, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}


@dataclass(frozen=True)
class Shape:
    kind: Kind
    colour: Colour
    cx: float  # centre of the bounding box, fraction of the image width (0 = left)
    cy: float  # fraction of the image height (0 = top)
    size: float  # side of the (square) bounding box, fraction of the image side

    @property
    def area(self) -> float:
        """Visible area in image-side² units: what "largest" means to someone looking."""
        return AREA_FACTOR[self.kind] * self.size**2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]


def _overlaps(a: Shape, b: Shape) -> bool:
    gap = (a.size + b.size) / 2 + MARGIN
    return abs(a.cx - b.cx) < gap and abs(a.cy - b.cy) < gap


def sample_scene(rng: random.Random) -> Scene:
    """1..MAX_SHAPES shapes whose bounding boxes (plus MARGIN) are disjoint, by rejection."""
    shapes: list[Shape] = []
    for _ in range(rng.randint(1, MAX_SHAPES)):
        for _attempt in range(50):
            size = rng.uniform(MIN_SIZE, MAX_SIZE)
            lo, hi = size / 2 + MARGIN / 2, 1 - size / 2 - MARGIN / 2
            shape = Shape(rng.choice(KINDS), rng.choice(sorted(COLOURS)),
                          rng.uniform(lo, hi), rng.uniform(lo, hi), size)
            if not any(_overlaps(shape, other) for other in shapes):
                shapes.append(shape)
                break
    return Scene(tuple(shapes))


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def _triangle(draw: ImageDraw.ImageDraw, box: Box, fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)  # apex up


DRAW: dict[Kind, Callable[[ImageDraw.ImageDraw, Box, tuple[int, int, int]], None]] = {
    "circle": lambda draw, box, fill: draw.ellipse(box, fill=fill),
    "square": lambda draw, box, fill: draw.rectangle(box, fill=fill),
    "triangle": _triangle,
}


def render(scene: Scene, size: int = 112) -> Image.Image:
    """Draw the scene without anti-aliasing, so every shape pixel has exactly its COLOURS value."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        box = ((s.cx - s.size / 2) * size, (s.cy - s.size / 2) * size,
               (s.cx + s.size / 2) * size, (s.cy + s.size / 2) * size)
        DRAW[s.kind](draw, box, COLOURS[s.colour])
    return image
