"""The flaw detector: hand-written cases, one per line with the reason, and the inverse of the
trace writer (clean traces show no flaw, each flawed one shows its own)."""

from typing import get_args

import pytest

from srmcr.parsing import parse
from toyworld.flaws import DETECTORS, Mention, find_flaws, mentions
from toyworld.scene import Scene, Shape
from toyworld.traces import Flaw, TraceMix, make_trace

# red circle on the left, blue square on the right, a small green circle at the bottom middle
SCENE = Scene((Shape("circle", "red", 0.2, 0.3, 0.2), Shape("square", "blue", 0.8, 0.3, 0.25),
               Shape("circle", "green", 0.5, 0.8, 0.15)))

CASES = [  # steps, expected flaws, why
    (["red circle on the left", "blue square on the right", "there are 2 circles"], set(),
     "every named shape is there, nothing repeats or clashes"),
    ([], set(), "no reasoning: nothing to judge"),
    (["red circle on the left", "Red circle on the left."], {"loop"},
     "a step repeated up to case and punctuation"),
    (["red circle on the left", "red circle in the middle"], set(),
     "same shape, different words: not a repeat"),
    (["yellow triangle on the left"], {"hallucination"}, "no yellow triangle in the scene"),
    (["blue circle on the left"], {"hallucination"}, "colour and kind present, not together"),
    (["there are 2 triangles"], {"hallucination"}, "no triangle at all"),
    (["there are 2 orange shapes"], {"hallucination"}, "nothing orange"),
    (["there is no yellow triangle"], set(), "a denial names what is absent"),
    (["there are no triangles"], set(), "a denial of a kind"),
    (["there is not a yellow triangle"], set(), "'not a' negates too"),
    (["there are 2 red shapes", "there are 3 shapes"], set(), "colour of shapes, bare 'shapes'"),
    (["red circle on the left", "there is no red circle"], {"contradiction"},
     "denies a shape another step names"),
    (["red circle on the left", "there are no circles"], {"contradiction"},
     "denies the kind of a named shape"),
    (["there are no red shapes", "red circle on the left"], {"contradiction"},
     "denies the colour of a named shape"),
    (["red circle on the left", "there is no green circle"], set(),
     "a false denial that no step contradicts: wrong, not self-contradicting"),
    (["green circle in the middle", "there is no blue circle"], set(),
     "another colour of the same kind is denied: no clash"),
    (["red circle is left of blue square", "red circle is right of blue square"],
     {"contradiction"}, "opposite relations"),
    (["red circle is left of blue square", "blue square is left of the red circle"],
     {"contradiction"}, "the same relation, swapped"),
    (["red circle is above green circle", "red circle is left of green circle"], set(),
     "different axes"),
    (["the largest shape is a square", "the largest shape is a circle"], {"contradiction"},
     "two largest shapes"),
    (["yellow triangle on the left", "yellow triangle on the left"], {"loop", "hallucination"},
     "both at once"),
]


@pytest.mark.parametrize("steps,expected,why", CASES, ids=[c[2] for c in CASES])
def test_cases(steps, expected, why):
    assert find_flaws(steps, SCENE) == expected, why


def test_mentions_and_negation():
    assert mentions("there are no 2 red circles and a blue square") == [
        Mention("red", "circle", True), Mention("blue", "square", False)]
    assert mentions("the shapes are big") == []


def test_detector_names_are_the_trace_writers_flaws():
    assert set(DETECTORS) == set(get_args(Flaw))


@pytest.mark.parametrize("kind", ["clean", *get_args(Flaw)])
def test_inverts_the_trace_writer(kind):
    """Clean traces show no flaw; a trace written with a flaw shows at least that one."""
    mix = TraceMix(clean=1.0) if kind == "clean" else TraceMix(clean=0.0, flaws={kind: 1.0})
    for index in range(200):
        record, trace = make_trace(0, "flaws", index, mix)
        found = find_flaws(parse(trace.text).steps, record.scene)
        assert (found == set()) if kind == "clean" else (kind in found), (trace.text, found)
