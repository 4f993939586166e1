"""The shapes world: determinism of the files, and every answer checked on the rendered pixels."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toyworld.shapes import COLOURS, KINDS, TEMPLATES, main, make_record, render


@dataclass
class Blob:
    colour: str
    kind: str
    pixels: int
    cx: float
    cy: float
    extent: dict[str, tuple[int, int]]  # axis -> (first, last) pixel


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (y, x)."""
    seen, out = np.zeros_like(mask), []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] \
                        and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out.append(np.array(pixels))
    return out


def blobs(image: Image.Image) -> list[Blob]:
    """What someone looking sees: one blob per shape, its kind from how it fills its box."""
    rgb = np.asarray(image)
    found = []
    for name, value in COLOURS.items():
        for px in _components((rgb == value).all(axis=-1)):
            h, w = np.ptp(px[:, 0]) + 1, np.ptp(px[:, 1]) + 1
            fill = len(px) / (h * w)  # square ~1, circle ~pi/4, triangle ~1/2
            kind = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            extent = {"cx": (px[:, 1].min(), px[:, 1].max()),
                      "cy": (px[:, 0].min(), px[:, 0].max())}
            found.append(Blob(name, kind, len(px), px[:, 1].mean(), px[:, 0].mean(), extent))
    return found


def _named(found: list[Blob], name: str) -> Blob:
    colour, kind = name.split()
    (blob,) = [b for b in found if b.colour == colour and b.kind == kind]
    return blob


def oracle(question: str, found: list[Blob]) -> str:
    """The answer read off the pixels, one rule per question wording."""
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(b.kind == m[1] for b in found))
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        return str(sum(b.colour == m[1] for b in found))
    if question == "How many shapes are there in total?":
        return str(len(found))
    if m := re.fullmatch(r"What colour is the only (\w+)\?", question):
        (blob,) = [b for b in found if b.kind == m[1]]
        return blob.colour
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if any(b.colour == m[1] and b.kind == m[2] for b in found) else "no"
    if m := re.fullmatch(r"Which is (further left|further right|higher up|lower down), "
                         r"the (\w+ \w+) or the (\w+ \w+)\?", question):
        a, b = _named(found, m[2]), _named(found, m[3])
        axis = "cx" if "further" in m[1] else "cy"
        low = min(a, b, key=lambda blob: getattr(blob, axis))
        high = a if low is b else b
        assert low.extent[axis][1] + 3 < high.extent[axis][0], "the two must be clearly apart"
        return (low if m[1] in ("further left", "higher up") else high).kind
    if question == "What colour is the largest shape?":
        return max(found, key=lambda b: b.pixels).colour
    raise AssertionError(f"no oracle for {question!r}")


RECORDS = [make_record(7, "val", i) for i in range(150)]


def test_every_answer_matches_the_pixels():
    for record in RECORDS:
        found = blobs(record.image)
        assert len(found) == len(record.scene.shapes), record.id  # no two shapes touch
        assert oracle(record.question, found) == record.answer, (record.id, record.question)


def test_every_template_appears_with_short_answers():
    assert len(TEMPLATES) >= 6
    assert Counter(r.template for r in RECORDS).keys() == TEMPLATES.keys()
    answers = {r.answer for r in RECORDS}
    assert answers <= {*map(str, range(7)), "yes", "no", *COLOURS, *KINDS}
    assert {"yes", "no"} <= answers and len({s.kind for r in RECORDS for s in r.scene.shapes}) == 3


def test_the_largest_shape_has_the_answer_colour_at_its_centre():
    for record in RECORDS:
        if record.template == "colour_of_largest":
            s = max(record.scene.shapes, key=lambda shape: shape.area)
            pixel = record.image.getpixel((int(s.cx * 112), int(s.cy * 112)))
            assert pixel == COLOURS[record.answer]


def test_records_are_independent_and_splits_differ():
    assert make_record(7, "val", 42).question == RECORDS[42].question
    assert make_record(7, "val", 42).image.tobytes() == RECORDS[42].image.tobytes()
    other = [make_record(7, "train", i).scene for i in range(20)]
    assert other != [r.scene for r in RECORDS[:20]]


def test_render_size_is_configurable():
    scene = RECORDS[0].scene
    assert render(scene, 64).size == (64, 64)
    assert make_record(7, "val", 0, size=200).image.size == (200, 200)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_cli_writes_identical_bytes_for_the_same_seed(tmp_path: Path):
    main(["--out", str(tmp_path / "a"), "--n", "12", "--seed", "3", "--split", "val"])
    main(["--out", str(tmp_path / "b"), "--n", "12", "--seed", "3", "--split", "val"])
    main(["--out", str(tmp_path / "c"), "--n", "12", "--seed", "4", "--split", "val"])
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 13 and a == b and a != c
    rows = [json.loads(line) for line in (tmp_path / "a" / "data.jsonl").read_text().splitlines()]
    for index, row in enumerate(rows):
        record = make_record(3, "val", index)
        assert row == {"image": f"images/{index:06d}.png", "question": record.question,
                       "answer": record.answer, "id": record.id}
        with Image.open(tmp_path / "a" / row["image"]) as image:
            assert image.convert("RGB").tobytes() == record.image.tobytes()


def test_cli_rejects_bad_arguments(tmp_path: Path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--n", "-1"])
