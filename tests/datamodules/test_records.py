"""Sources and decoding: image size caps, shapes source strings, resolving paths and globs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from datamodules.records import (DecodeArgs, JsonlSource, ShapesSource, fit_pixels, parse_shapes,
                                 resolve)
from datamodules.shapes import make_record
from tests.datamodules.helpers import png, write_jsonl

MIN, MAX = 56 * 56, 448 * 448


@pytest.mark.parametrize("size", [(1000, 500), (3000, 2000), (500, 4000), (10, 20), (5, 5),
                                  (40, 200)])
def test_fit_pixels_bounds_the_area_and_keeps_the_aspect_ratio(size):
    w, h = fit_pixels(Image.new("RGB", size), MIN, MAX).size
    assert MIN <= w * h <= MAX
    assert w / h == pytest.approx(size[0] / size[1], rel=0.05)


def test_fit_pixels_leaves_images_within_bounds_untouched():
    image = Image.new("RGB", (112, 112))
    assert fit_pixels(image, MIN, MAX) is image


def test_decode_resizes_and_converts_to_rgb(tmp_path: Path):
    Image.new("RGBA", (900, 300), (1, 2, 3, 4)).save(tmp_path / "big.png")
    Image.new("L", (20, 10)).save(tmp_path / "small.png")
    source = JsonlSource(write_jsonl(tmp_path / "d.jsonl", [
        {"image": "big.png", "question": "q", "answer": 3},
        {"image": "small.png", "question": "q", "id": "x1"}]))
    args = DecodeArgs(min_pixels=1000, max_pixels=20_000, max_question_chars=100)
    big, small = (source.decode(label, raw, args) for label, raw in source.raws())
    assert big.image.mode == small.image.mode == "RGB"
    assert big.image.width * big.image.height <= 20_000
    assert big.image.width / big.image.height == pytest.approx(3, rel=0.02)
    assert small.image.width * small.image.height >= 1000
    assert (big.answer, big.id, big.source) == ("3", f"{source.path}:1", f"{source.path}:1")
    assert (small.answer, small.id) == (None, "x1")


def test_image_root_replaces_the_jsonl_folder(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    png(tmp_path / "imgs" / "a.png")
    source = JsonlSource(write_jsonl(tmp_path / "d.jsonl", [{"image": "a.png", "question": "q"}]))
    args = DecodeArgs(1, 10**6, 100, image_root=tmp_path / "imgs")
    (label, raw), = source.raws()
    assert source.decode(label, raw, args).image.size == (16, 16)


def test_shapes_source_matches_make_record():
    source = parse_shapes("shapes:val?n=5&size=64&seed=2")
    assert source == ShapesSource("val", n=5, size=64, seed=2)
    labels = [label for label, _ in source.raws()]
    assert labels == [f"shapes:val:{i}" for i in range(5)]
    example = source.decode("shapes:val:3", 3, DecodeArgs(1, 10**6, 100))
    record = make_record(2, "val", 3, size=64)
    assert (example.question, example.answer, example.id) == (record.question, record.answer,
                                                              record.id)
    assert example.image.tobytes() == record.image.tobytes()
    assert parse_shapes("shapes:train") == ShapesSource("train", n=512, size=112, seed=0)


@pytest.mark.parametrize("spec, match", [
    ("shapes:", "write the split"),
    ("shapes:train?n=ten", "expected"),
    ("shapes:train?count=3", "unknown keys"),
    ("shapes:train?n=0", "n must be"),
    ("shapes:train?n", "expected"),
])
def test_bad_shapes_strings_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_shapes(spec)


def test_resolve_sorts_globs_and_reports_missing_paths(tmp_path: Path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("")
    assert [s.path.name for s in resolve(str(tmp_path / "*.jsonl"))] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        resolve(str(tmp_path / "nothing-here.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"glob .*\*\.json'"):
        resolve(str(tmp_path / "*.json"))
