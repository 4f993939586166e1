"""Question templates over a shapes ``Scene``, each with an exact, short answer.

A template returns ``(question, answer)``, or ``None`` where the scene cannot support it without
ambiguity (no shape that is the only one of its kind, no pair clearly apart, no clear largest);
``ask`` then falls back to another template, so every scene gets a question.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from toyworld.scene import COLOURS, KINDS, MARGIN, Scene, Shape

Template = Callable[[Scene, random.Random], "tuple[str, str] | None"]
LARGEST_RATIO = 1.5  # the largest shape must beat the runner-up's area by this much


def _count_kind(scene: Scene, rng: random.Random) -> tuple[str, str]:
    # Draw from the kinds present plus one at random, so that "0" is an answer but not the usual.
    kind = rng.choice(sorted({s.kind for s in scene.shapes} | {rng.choice(KINDS)}))
    return f"How many {kind}s are there?", str(sum(s.kind == kind for s in scene.shapes))


def _count_colour(scene: Scene, rng: random.Random) -> tuple[str, str]:
    colour = rng.choice(sorted({s.colour for s in scene.shapes} | {rng.choice(sorted(COLOURS))}))
    question = f"How many {colour} shapes are there?"
    return question, str(sum(s.colour == colour for s in scene.shapes))


def _count_total(scene: Scene, rng: random.Random) -> tuple[str, str]:
    return "How many shapes are there in total?", str(len(scene.shapes))


def _colour_of_only(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    singles = [k for k in KINDS if sum(s.kind == k for s in scene.shapes) == 1]
    if not singles:
        return None
    kind = rng.choice(singles)
    shape = next(s for s in scene.shapes if s.kind == kind)
    return f"What colour is the only {kind}?", shape.colour


def _exists(scene: Scene, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:  # half the time ask about a shape that is there: balanced yes/no
        shape = rng.choice(scene.shapes)
        colour, kind = shape.colour, shape.kind
    else:
        colour, kind = rng.choice(sorted(COLOURS)), rng.choice(KINDS)
    present = any(s.colour == colour and s.kind == kind for s in scene.shapes)
    return f"Is there a {colour} {kind}?", "yes" if present else "no"


def _apart_pairs(scene: Scene, axis: str) -> list[tuple[Shape, Shape]]:
    """Pairs of different kinds, each named uniquely, whose boxes are disjoint along ``axis``."""
    names = [s.name for s in scene.shapes]
    unique = [s for s in scene.shapes if names.count(s.name) == 1]
    return [(a, b) for i, a in enumerate(unique) for b in unique[i + 1:]
            if a.kind != b.kind
            and abs(getattr(a, axis) - getattr(b, axis)) >= (a.size + b.size) / 2 + MARGIN]


def _position(axis: str, words: tuple[str, str]) -> Template:
    def template(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
        pairs = _apart_pairs(scene, axis)
        if not pairs:
            return None
        a, b = rng.sample(rng.choice(pairs), 2)  # random order inside the question
        low_first = rng.random() < 0.5  # ask for the smaller coordinate (left / higher up)?
        word = words[0] if low_first else words[1]
        first, second = sorted((a, b), key=lambda s: getattr(s, axis))
        winner = first if low_first else second
        return f"Which is {word}, the {a.name} or the {b.name}?", winner.kind
    return template


def _colour_of_largest(scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    by_area = sorted(scene.shapes, key=lambda s: s.area, reverse=True)
    if len(by_area) > 1 and by_area[0].area < LARGEST_RATIO * by_area[1].area:
        return None
    return "What colour is the largest shape?", by_area[0].colour


TEMPLATES: dict[str, Template] = {
    "count_kind": _count_kind,
    "count_colour": _count_colour,
    "count_total": _count_total,
    "colour_of_only": _colour_of_only,
    "exists": _exists,
    "left_right": _position("cx", ("further left", "further right")),
    "above_below": _position("cy", ("higher up", "lower down")),
    "colour_of_largest": _colour_of_largest,
}


def ask(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """(template name, question, answer): a random template the scene supports."""
    for name in rng.sample(sorted(TEMPLATES), len(TEMPLATES)):
        qa = TEMPLATES[name](scene, rng)
        if qa is not None:
            return name, *qa
    raise AssertionError("count_total applies to every scene")  # unreachable
