"""Which flaws a reasoning trace shows, judged against the scene it is about.

The inverse of the trace writer (``toyworld.traces``): its three flaws, detected in any text,
the warm-up's traces or a trained model's completions. Deterministic rules on the words of the
steps (step markers already stripped, as ``srmcr.parsing.parse`` gives them), no model:

- ``loop``: two steps are the same after lower-casing and dropping punctuation and extra spaces.
- ``hallucination``: a step names, not negated, a shape that matches nothing in the scene: a
  colour-kind pair ("red circle", "2 red circles"), a kind ("circles"), or a colour of shapes
  ("red shapes"). A mention is negated when the word before it (articles and numbers skipped) is
  "no" or "not": "there is no red circle" names what is absent.
- ``contradiction``: one step denies what another asserts: "no red circle(s)" against a red circle
  named elsewhere ("no circles" against any circle, "no red shapes" against any red one);
  "A is left of B" against "A is right of B" or "B is left of A" (likewise above / below); or two
  different kinds called "the largest shape".

Only the shapes world's vocabulary (``toyworld.scene``) is understood; other text never
counts as a flaw. Used by ``benchmarks/toy_world.py`` for the share of flawed-looking traces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

from toyworld.scene import COLOURS, KINDS, Scene

Flaw = Literal["loop", "hallucination", "contradiction"]  # the names of traces.Flaw
_COLOUR, _KIND = "|".join(COLOURS), "|".join(KINDS)
# An optional colour, then a kind or "shape", optionally plural: "red circles", "circle",
# "red shapes". A bare "shape(s)" (no colour) is not a mention.
_MENTION = re.compile(rf"\b(?:({_COLOUR}) )?({_KIND}|shape)s?\b")
_SKIP = {"a", "an", "the", "any", "one", "two", "three", "four", "five", "six"}
_NEGATIONS = {"no", "not"}
_NAME = rf"(?:the )?(?:({_COLOUR}) )?({_KIND})"
_RELATION = re.compile(rf"{_NAME} is (left of|right of|above|below) {_NAME}")
_LARGEST = re.compile(rf"\blargest shape is (?:an? )?({_KIND})\b")
# Relation word -> (axis, whether the first shape comes first on that axis).
_ORDER = {"left of": ("x", True), "right of": ("x", False), "above": ("y", True),
          "below": ("y", False)}


class Mention(NamedTuple):
    colour: str | None  # None: any colour ("circles")
    kind: str | None  # None: any kind ("red shapes")
    negated: bool


def _words(step: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", step.lower()).split())


def mentions(step: str) -> list[Mention]:
    """Shapes named in ``step``, each with whether it is negated; "shapes" alone is skipped."""
    text = _words(step)
    found = []
    for match in _MENTION.finditer(text):
        colour, kind = match.group(1), match.group(2)
        kind = None if kind == "shape" else kind
        if colour is None and kind is None:
            continue
        before = [w for w in text[:match.start()].split() if w not in _SKIP and not w.isdigit()]
        found.append(Mention(colour, kind, bool(before) and before[-1] in _NEGATIONS))
    return found


def _matches(mention: Mention, colour: str, kind: str) -> bool:
    return mention.colour in (None, colour) and mention.kind in (None, kind)


def _loop(steps: Sequence[str], scene: Scene) -> bool:
    said = [w for w in map(_words, steps) if w]
    return len(said) != len(set(said))


def _hallucination(steps: Sequence[str], scene: Scene) -> bool:
    return any(not m.negated and not any(_matches(m, s.colour, s.kind) for s in scene.shapes)
               for step in steps for m in mentions(step))


def _relations(steps: Sequence[str]) -> set[tuple[str, str, str]]:
    """(first, second, axis) for each "A is left of B": first comes before second on axis."""
    out = set()
    for step in map(_words, steps):
        for c1, k1, word, c2, k2 in _RELATION.findall(step):
            a, b = f"{c1} {k1}".strip(), f"{c2} {k2}".strip()
            axis, forward = _ORDER[word]
            out.add((a, b, axis) if forward else (b, a, axis))
    return out


def _contradiction(steps: Sequence[str], scene: Scene) -> bool:
    said = [m for step in steps for m in mentions(step)]
    denied = [m for m in said if m.negated]
    asserted = [m for m in said if not m.negated]
    # A denial contradicts an assertion at least as specific: "no circles" vs "red circle" and
    # vs "circles"; "no red circle" vs "red circle", not vs "circles" (another colour may be meant).
    if any(d.colour in (None, a.colour) and d.kind in (None, a.kind) for d in denied
           for a in asserted):
        return True
    relations = _relations(steps)
    if any((b, a, axis) in relations for a, b, axis in relations):
        return True
    return len({k for step in map(_words, steps) for k in _LARGEST.findall(step)}) > 1


DETECTORS: dict[Flaw, Callable[[Sequence[str], Scene], bool]] = {
    "loop": _loop, "hallucination": _hallucination, "contradiction": _contradiction,
}


def find_flaws(steps: Sequence[str], scene: Scene) -> set[Flaw]:
    """The flaws that ``steps`` (a trace's steps, markers stripped) show about ``scene``."""
    return {name for name, detect in DETECTORS.items() if detect(steps, scene)}
