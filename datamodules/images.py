"""Decoding one image for Qwen2.5-VL: 8-bit RGB, transparency flattened, a size the processor takes.

- **Bit depth.** 16-bit greyscale (PIL modes ``I;16*``, 0..65535) is scaled to 8 bits by its
  depth (x 255 / 65535), not clipped as PIL's ``convert("RGB")`` does; 32-bit integer images
  (``I``) count as 16-bit when their values fit in 0..65535, else as 32-bit; float images (``F``)
  are read as 0..1 when their maximum is at most 1, else as 0..255.
- **Transparency** (``RGBA``, ``LA``, ``PA``, a ``P`` or ``L``/``RGB`` image with a transparent
  colour) is composited on a white background (``BACKGROUND``), so a transparent pixel becomes
  white rather than the colour hidden under alpha 0.
- **Size.** Qwen2-VL's ``smart_resize`` rounds both sides to multiples of 28 (``FACTOR``, patch 14
  x merge 2) and raises on an aspect ratio over 200; a side under 28 px after our scaling would be
  stretched to 28, past ``max_pixels``. ``fit_processor`` scales the area into [min_pixels,
  max_pixels] and the short side up to 28, or raises ``ImageError("bad_aspect")`` for an image no
  such size fits: aspect ratio over 200, or one whose short side cannot reach 28 px within
  ``max_pixels`` (aspect ratio > max_pixels / 784).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

FACTOR = 28  # Qwen2-VL's patch (14) x spatial merge (2): sides become multiples of this
MAX_ASPECT = 200  # smart_resize raises on max(h, w) / min(h, w) > 200
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
# What PIL raises on corrupt files: OSError (truncated, decoder errors; UnidentifiedImageError is
# one), ValueError, SyntaxError ("broken PNG file" from a damaged chunk) and DecompressionBombError.
_IMAGE_ERRORS = (OSError, Image.UnidentifiedImageError, ValueError, SyntaxError,
                 Image.DecompressionBombError)


class ImageError(ValueError):
    """An image to skip: ``reason`` is ``bad_image`` (cannot decode) or ``bad_aspect``."""

    def __init__(self, reason: Literal["bad_image", "bad_aspect"], detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def decode(data: bytes | Path, min_pixels: int, max_pixels: int) -> Image.Image:
    """Encoded bytes or a file -> an RGB image sized for the processor (module docstring)."""
    name = "the image bytes" if isinstance(data, bytes) else str(data)
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()  # decode now: a truncated file fails here, not inside the model
            rgb = to_rgb(image)
    except _IMAGE_ERRORS as error:
        raise ImageError("bad_image", f"{name}: {error}") from error
    return fit_processor(rgb, min_pixels, max_pixels)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: high bit depths scaled by their depth, transparency on ``BACKGROUND``."""
    if image.mode in _HIGH_DEPTH:
        return Image.fromarray(_to_8_bits(image), mode="L").convert("RGB")
    if image.mode in _ALPHA or "transparency" in image.info or (
            image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8_bits(image: Image.Image) -> np.ndarray:
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    elif image.mode == "I" and values.size and values.max() > 65535:
        top = 2.0**32 - 1
    else:
        top = 65535.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def fit_pixels(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """Scale ``image`` (keeping its aspect ratio) so that its area lies in [min, max] pixels."""
    w, h = image.size
    area = w * h
    if min_pixels <= area <= max_pixels:
        return image
    shrink = area > max_pixels
    scale = math.sqrt((max_pixels if shrink else min_pixels) / area)
    rounding = math.floor if shrink else math.ceil  # the rounded area stays inside the bounds
    size = (max(1, rounding(w * scale)), max(1, rounding(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def processor_size(height: int, width: int, min_pixels: int, max_pixels: int,
                   factor: int = FACTOR) -> tuple[int, int]:
    """(height, width) that Qwen2-VL's ``smart_resize`` gives, without its aspect check (a copy:
    importing transformers costs seconds; tests compare the two)."""
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_processor(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """``image`` scaled so that the processor takes it as it is planned: area within [min_pixels,
    max_pixels], short side at least ``FACTOR``; ``ImageError("bad_aspect")`` where none fits."""
    w, h = image.size
    ratio = max(w, h) / min(w, h)
    if ratio > MAX_ASPECT:
        raise ImageError("bad_aspect", f"{w}x{h}: aspect ratio {ratio:.0f} is over "
                                       f"{MAX_ASPECT}, the Qwen processor's limit")
    if FACTOR * FACTOR * ratio > max_pixels:
        raise ImageError("bad_aspect", f"{w}x{h}: at aspect ratio {ratio:.1f} its short side "
                         f"stays under {FACTOR} px within max_pixels={max_pixels}, and the "
                         "processor would stretch it; max_pixels >= "
                         f"{math.ceil(FACTOR * FACTOR * ratio)} keeps such images")
    fitted = fit_pixels(image, min_pixels, max_pixels)
    if min(fitted.size) < FACTOR:  # from the original size: rounding keeps the aspect ratio
        scale = FACTOR / min(w, h)
        size = (max(FACTOR, math.floor(w * scale)), max(FACTOR, math.floor(h * scale)))
        fitted = image.resize(size, Image.Resampling.BICUBIC)
    height, width = processor_size(fitted.height, fitted.width, min_pixels, max_pixels)
    if not min_pixels <= height * width <= max_pixels:
        raise ImageError("bad_aspect", f"{w}x{h}: the processor would resize it to "
                         f"{width}x{height}, outside [min_pixels={min_pixels}, "
                         f"max_pixels={max_pixels}]")
    return fitted
