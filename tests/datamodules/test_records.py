"""Sources and decoding: image size caps, resolving paths and globs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from datamodules.records import DecodeArgs, JsonlSource, fit_pixels, resolve
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
    png(tmp_path / "imgs" / "a.png", size=(40, 30))
    source = JsonlSource(write_jsonl(tmp_path / "d.jsonl", [{"image": "a.png", "question": "q"}]))
    args = DecodeArgs(1, 10**6, 100, image_root=tmp_path / "imgs")
    (label, raw), = source.raws()
    assert source.decode(label, raw, args).image.size == (40, 30)


def test_resolve_sorts_globs_and_reports_missing_paths(tmp_path: Path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("")
    assert [s.path.name for s in resolve(str(tmp_path / "*.jsonl"))] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        resolve(str(tmp_path / "nothing-here.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"glob .*\*\.json'"):
        resolve(str(tmp_path / "*.json"))
