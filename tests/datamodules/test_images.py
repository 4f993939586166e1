"""Image decoding, from every source: bit depth, transparency, and the sizes Qwen's processor
takes (aspect ratio, short side, pixel bounds), checked when the record is read."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.image_question import ImageQuestionDataModule
from datamodules.images import (
    BACKGROUND,
    FACTOR,
    ImageError,
    fit_processor,
    processor_size,
)
from datamodules.records import REASONS
from tests.datamodules.helpers import write_jsonl, write_table
from tests.datamodules.test_image_question import take

SOURCES = ["d.jsonl", "d.parquet", "saved"]  # a path in JSONL; bytes in Parquet, save_to_disk


def _encoded(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _module(tmp_path: Path, source: str, images: list[bytes], **kwargs) -> ImageQuestionDataModule:
    rows = [{"image": data, "question": f"q{i}?"} for i, data in enumerate(images)]
    if source == "d.jsonl":
        for i, row in enumerate(rows):
            (tmp_path / f"{i}.png").write_bytes(row["image"])
            row["image"] = f"{i}.png"
        path = write_jsonl(tmp_path / source, rows)
    else:
        path = write_table(tmp_path / source, rows)
    return ImageQuestionDataModule(val=str(path), batch_size=len(rows), max_bad_fraction=1.0,
                                   **{"min_pixels": 1, **kwargs})


def _decoded(tmp_path: Path, source: str, image: Image.Image, **save) -> Image.Image:
    (batch,) = take(_module(tmp_path, source, [_encoded(image, **save)]), "val")
    return batch.images[0]


@pytest.mark.parametrize("source", SOURCES)
def test_a_16_bit_greyscale_gradient_maps_onto_0_to_255(tmp_path: Path, source: str):
    values = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)  # 0 .. 65535
    image = Image.fromarray(np.tile(values, (FACTOR, 1)))
    assert image.mode == "I;16"
    pixels = np.asarray(_decoded(tmp_path, source, image))
    assert pixels.shape == (FACTOR, 256, 3)  # untouched size: only the depth changes
    assert (pixels == np.arange(256)[None, :, None]).all()  # R = G = B = value / 257


def test_other_high_depth_modes_scale_by_their_depth():
    from datamodules.images import to_rgb
    as_int = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32), mode="I")
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    for image in (as_int, as_float):
        assert [p[0] for p in np.asarray(to_rgb(image))[0]] == [0, 128, 255]


@pytest.mark.parametrize("source", SOURCES)
def test_transparent_pixels_composite_on_white(tmp_path: Path, source: str):
    image = Image.new("RGBA", (FACTOR, FACTOR), (10, 20, 30, 0))
    image.putpixel((1, 0), (10, 20, 30, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))
    got = _decoded(tmp_path, source, image)
    assert got.getpixel((0, 0)) == BACKGROUND == (255, 255, 255)
    assert got.getpixel((1, 0)) == (10, 20, 30)
    assert all(abs(c - 127) <= 1 for c in got.getpixel((2, 0)))  # half alpha: half way


@pytest.mark.parametrize("mode, transparent, save", [
    ("LA", (40, 0), {}),
    ("P", 3, {"transparency": 3}),  # palette index 3 is the transparent colour
    ("L", 7, {"transparency": 7}),  # a grey level marked transparent (tRNS)
], ids=["LA", "P with tRNS", "L with tRNS"])
def test_every_kind_of_transparency_composites_on_white(tmp_path: Path, mode, transparent, save):
    image = Image.new(mode, (FACTOR, FACTOR), transparent)
    if mode == "P":
        image.putpalette(range(48))  # 16 grey-ish colours; index 3 is (9, 10, 11)
    got = _decoded(tmp_path, "d.parquet", image, **save)
    assert got.getpixel((0, 0)) == BACKGROUND


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("size", [(4000, 10), (10, 4000)])
def test_an_image_over_200_to_1_is_skipped_and_counted(tmp_path: Path, source: str, size, caplog):
    good = _encoded(Image.new("RGB", (FACTOR, FACTOR)))
    dm = _module(tmp_path, source, [good, _encoded(Image.new("RGB", size)), good],
                 min_pixels=784, max_pixels=3136)
    (batch,) = take(dm, "val")
    assert len(batch) == 2
    assert dm.skipped == {r: int(r == "bad_aspect") for r in REASONS}
    assert "aspect ratio 400 is over 200, the Qwen processor's limit" in caplog.text


def test_a_short_side_the_bounds_cannot_lift_to_28_px_is_skipped_saying_what_to_set():
    image = Image.new("RGB", (500, 25))  # 20:1: 28 px high needs 560 x 28 = 15680 pixels
    with pytest.raises(ImageError, match="max_pixels >= 15680 keeps such images") as error:
        fit_processor(image, 3136, 12544)
    assert error.value.reason == "bad_aspect"
    assert fit_processor(image, 3136, 15680).size == (560, 28)


SIZES = [(4000, 20), (2000, 10), (1000, 10), (199 * 30, 30), (200 * 28, 28), (3, 5), (16, 16),
         (5000, 3000), (640, 480), (81, 13), (1, 1)]
BOUNDS = [(784, 3136), (3136, 12544), (3136, 448 * 448), (1, 10**6), (56 * 56, 28 * 28 * 1280)]


@pytest.mark.parametrize("min_pixels, max_pixels", BOUNDS)
def test_every_kept_image_passes_the_real_processor_within_its_bounds(min_pixels, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    kept = 0
    for w, h in SIZES:
        try:
            image = fit_processor(Image.new("RGB", (w, h)), min_pixels, max_pixels)
        except ImageError as error:
            assert error.reason == "bad_aspect"
            continue
        kept += 1
        assert min_pixels <= image.width * image.height <= max_pixels
        assert min(image.size) >= FACTOR
        assert image.width / image.height == pytest.approx(w / h, rel=0.05)
        height, width = smart_resize(image.height, image.width, FACTOR, min_pixels, max_pixels)
        assert min_pixels <= height * width <= max_pixels, (w, h)
    assert kept >= 5


def test_processor_size_is_transformers_smart_resize():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    for h in (1, 5, 13, 14, 27, 28, 29, 41, 100, 333, 1000, 4000):
        for w in (1, 9, 28, 50, 450, 3999):
            if max(h, w) / min(h, w) > 200:
                continue
            for bounds in BOUNDS:
                assert processor_size(h, w, *bounds) == smart_resize(h, w, FACTOR, *bounds)
