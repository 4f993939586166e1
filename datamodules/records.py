"""Record sources (JSONL files, and registered ``<kind>:`` sources) and decoding one record.

A source yields raw records cheaply, ``(label, payload)`` with label ``"path:line"`` or, for a
registered source (``srmcr.sources``), e.g. ``"shapes:<split>:<index>"``; ``decode`` turns one
into an ``Example`` (parse, validate, open and resize the image) or raises ``BadRecord`` with a
reason. The split keeps shuffling, sharding and
fast-forwarding on raw records, so skipped records never cost an image decode.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from PIL import Image

from srmcr import sources
from srmcr.errors import MissingFileError

Reason = Literal["bad_json", "missing_field", "missing_image", "bad_image", "long_question"]
REASONS: tuple[Reason, ...] = get_args(Reason)
# What PIL raises on corrupt files: OSError (truncated, decoder errors; UnidentifiedImageError is
# one), ValueError, SyntaxError ("broken PNG file" from a damaged chunk) and DecompressionBombError.
_IMAGE_ERRORS = (OSError, Image.UnidentifiedImageError, ValueError, SyntaxError,
                 Image.DecompressionBombError)


class BadRecord(Exception):
    """A record to skip: ``reason`` is counted, ``detail`` goes into the warning."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Example:
    image: Image.Image  # RGB, area within [min_pixels, max_pixels]
    question: str
    answer: str | None
    id: str
    source: str  # "path/data.jsonl:17" or "shapes:train:17"


@dataclass(frozen=True)
class DecodeArgs:
    min_pixels: int
    max_pixels: int
    max_question_chars: int
    image_root: Path | None = None  # None: image paths are relative to their JSONL file


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


def load_image(path: Path, args: DecodeArgs) -> Image.Image:
    if not path.is_file():
        raise BadRecord("missing_image", f"no image file {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not inside the model
            rgb = image.convert("RGB")
    except _IMAGE_ERRORS as error:
        raise BadRecord("bad_image", f"{path}: {error}") from error
    return fit_pixels(rgb, args.min_pixels, args.max_pixels)


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRecord("missing_field", f"{key!r} is missing, empty or not a string")
    return value


@dataclass(frozen=True)
class JsonlSource:
    path: Path

    def __str__(self) -> str:
        return str(self.path)

    def raws(self) -> Iterator[tuple[str, bytes]]:
        # Binary line iteration: bounded memory on any file size, and a bad UTF-8 byte becomes
        # one bad_json record in decode instead of an error that ends the whole stream.
        with self.path.open("rb") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield f"{self.path}:{lineno}", line

    def decode(self, label: str, raw: bytes, args: DecodeArgs) -> Example:
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BadRecord("bad_json", str(error)) from error
        if not isinstance(row, dict):
            raise BadRecord("bad_json", f"a JSON {type(row).__name__}, not an object")
        image, question = _text(row, "image"), _text(row, "question")
        if len(question) > args.max_question_chars:
            raise BadRecord("long_question", f"{len(question)} characters "
                            f"> max_question_chars={args.max_question_chars}")
        root = args.image_root if args.image_root is not None else self.path.parent
        answer, id_ = row.get("answer"), row.get("id")
        return Example(load_image(root / image, args), question,
                       None if answer is None else str(answer),
                       label if id_ is None or id_ == "" else str(id_), label)


class Source(Protocol):
    """What the record stream reads: raw records, cheaply, and their decoding."""

    def raws(self) -> Iterator[tuple[str, Any]]: ...

    def decode(self, label: str, raw: Any, args: DecodeArgs) -> Example: ...


def registered(spec: str) -> Source | None:
    """The source of a ``<kind>:...`` spec whose kind is registered (``srmcr.sources``), else
    None; a registered kind with a malformed spec raises ``ConfigError``."""
    kind = sources.spec_kind(spec)
    found = None if kind is None else sources.data_source(kind)
    return None if found is None else found.parse(spec)


def resolve(spec: str) -> list[Source]:
    """One source string -> its sources; a missing file or an empty glob is an error here."""
    source = registered(spec)
    if source is not None:
        return [source]
    pattern = str(Path(spec).expanduser())
    if any(char in pattern for char in "*?["):
        paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not paths:
            raise MissingFileError(f"no file matches the glob {spec!r}")
        return [JsonlSource(p) for p in paths]
    if not Path(pattern).is_file():
        kinds = sources.data_kinds()
        also = f" (registered sources: {', '.join(k + ':' for k in kinds)})" if kinds else ""
        raise MissingFileError(f"no such JSONL file: {spec!r}{also}")
    return [JsonlSource(Path(pattern))]
