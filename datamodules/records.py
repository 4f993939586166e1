"""Record sources (JSONL, Parquet, ``save_to_disk`` folders, registered ``<kind>:`` sources) and
decoding one record.

A source yields raw records cheaply, ``(label, payload)``: label ``"path:line"`` (JSONL, 1-based),
``"path:row"`` (Parquet and saved datasets, 0-based as ``Dataset[row]``) or, for a registered
source (``srmcr.sources``), e.g. ``"shapes:<split>:<index>"``; ``decode`` turns one into an
``Example`` (read the mapped fields, render choices, open and size the image) or raises
``BadRecord`` with a reason. The split keeps shuffling, sharding and fast-forwarding on raw
records, so skipped records never cost an image decode.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from PIL import Image

from datamodules import images
from datamodules.images import fit_pixels
from srmcr import sources
from srmcr.answers import Choice
from srmcr.errors import MissingFileError
from srmcr.prompts import OPTION_LETTERS, with_choices

__all__ = ["REASONS", "BadRecord", "ColumnArgs", "DecodeArgs", "Example", "JsonlSource",
           "Source", "fit_pixels", "resolve"]
Reason = Literal["bad_json", "missing_field", "missing_image", "bad_image", "bad_aspect",
                 "bad_choices", "long_question"]
REASONS: tuple[Reason, ...] = get_args(Reason)
_LETTER = re.compile(r"\(?([A-Za-z])\)?[.):]?")


class BadRecord(Exception):
    """A record to skip: ``reason`` is counted, ``detail`` goes into the warning."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Example:
    image: Image.Image  # RGB, area within [min_pixels, max_pixels], short side >= 28
    question: str  # with the lettered options of a multiple-choice record
    answer: str | None  # a srmcr.answers.Choice for a multiple-choice record
    id: str
    source: str  # "path/data.jsonl:17", "path/data.parquet:16" or "shapes:train:17"


@dataclass(frozen=True)
class ColumnArgs:
    """Which field (JSON key or column) holds each part of a record."""

    image: str = "image"
    """An image path (relative to ``image_root``, else to the file's folder), encoded image bytes,
    or the ``datasets`` ``Image`` feature (a struct of ``bytes`` and ``path``)."""
    question: str = "question"
    """The question text."""
    answer: str = "answer"
    """The reference answer (optional; validation metrics only). With choices: a letter or the
    text of one option."""
    id: str = "id"
    """The record's id (optional; default: its source, ``path:line``)."""
    choices: str = "choices"
    """A list of options (optional): the question then lists them as ``A. <option>`` lines."""


@dataclass(frozen=True)
class DecodeArgs:
    min_pixels: int
    max_pixels: int
    max_question_chars: int
    image_root: Path | None = None  # None: image paths are relative to their data file
    columns: ColumnArgs = field(default_factory=ColumnArgs)


def load_image(path: Path, args: DecodeArgs) -> Image.Image:
    if not path.is_file():
        raise BadRecord("missing_image", f"no image file {path}")
    return _decode(path, args)


def _decode(data: Path | bytes, args: DecodeArgs) -> Image.Image:
    try:
        return images.decode(data, args.min_pixels, args.max_pixels)
    except images.ImageError as error:
        raise BadRecord(error.reason, error.detail) from error


def _image_ref(value: Any, key: str) -> bytes | str:
    """A path string, encoded bytes, or ``{"bytes": ..., "path": ...}`` (``datasets.Image``) ->
    the bytes or the path."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes | bytearray) and value:
        return bytes(value)
    if isinstance(value, str) and value.strip():
        return value
    raise BadRecord("missing_field", f"{key!r} is missing, empty, or neither a path nor bytes")


def _open(ref: bytes | str, folder: Path, args: DecodeArgs) -> Image.Image:
    if isinstance(ref, bytes):
        return _decode(ref, args)
    return load_image((args.image_root if args.image_root is not None else folder) / ref, args)


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRecord("missing_field", f"{key!r} is missing, empty or not a string")
    return value


def _choices(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or len(value) > len(OPTION_LETTERS) or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) and str(v).strip()
            for v in value):
        raise BadRecord("bad_choices", f"{key!r} must be a list of at most {len(OPTION_LETTERS)} "
                                       "non-empty strings")
    return tuple(str(v).strip() for v in value)


def _answer(value: Any, options: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not options:
        return str(value)
    for letter, option in zip(OPTION_LETTERS, options):  # an option's text first, then a letter
        if text.casefold() == option.casefold():
            return Choice(letter, options)
    found = _LETTER.fullmatch(text)
    if found and OPTION_LETTERS.find(found.group(1).upper()) < len(options):
        return Choice(found.group(1).upper(), options)
    raise BadRecord("bad_choices", f"answer {text!r} is neither a letter "
                                   f"A-{OPTION_LETTERS[len(options) - 1]} nor one of the choices")


def example(row: dict, label: str, folder: Path, args: DecodeArgs) -> Example:
    """One record (a dict of fields, named by ``args.columns``) -> an ``Example``; image paths
    are relative to ``args.image_root``, else to ``folder``."""
    c = args.columns
    image = _image_ref(row.get(c.image), c.image)
    question, options = _text(row, c.question), _choices(row.get(c.choices), c.choices)
    if options:
        question = with_choices(question, options)
    if len(question) > args.max_question_chars:
        raise BadRecord("long_question", f"{len(question)} characters "
                        f"> max_question_chars={args.max_question_chars}")
    answer, id_ = _answer(row.get(c.answer), options), row.get(c.id)
    return Example(_open(image, folder, args), question, answer,
                   label if id_ is None or id_ == "" else str(id_), label)


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
        return example(row, label, self.path.parent, args)


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


def _file_source(path: Path, columns: ColumnArgs) -> Source:
    from datamodules import tables  # pyarrow: only for Parquet and saved datasets

    if path.is_dir():
        return tables.ArrowDatasetSource.open(path, columns)
    if path.suffix == ".parquet":
        return tables.ParquetSource.open(path, columns)
    return JsonlSource(path)


def resolve(spec: str, columns: ColumnArgs | None = None) -> list[Source]:
    """One source string -> its sources: a registered ``<kind>:`` spec, a JSONL or Parquet file
    (by its ``.parquet`` suffix), a ``save_to_disk`` folder, or a glob of those (sorted). A missing
    path, an empty glob or a table without a required column is an error here."""
    columns = columns or ColumnArgs()
    source = registered(spec)
    if source is not None:
        return [source]
    pattern = str(Path(spec).expanduser())
    if any(char in pattern for char in "*?["):
        from datamodules.tables import is_saved_dataset
        paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                       if Path(p).is_file() or is_saved_dataset(Path(p)))
        if not paths:
            raise MissingFileError(f"no file matches the glob {spec!r}")
        return [_file_source(p, columns) for p in paths]
    path = Path(pattern)
    if not path.exists():
        kinds = sources.data_kinds()
        also = f"; registered sources: {', '.join(k + ':' for k in kinds)}" if kinds else ""
        kind = "Parquet file" if path.suffix == ".parquet" else "JSONL file"
        raise MissingFileError(f"no such {kind}: {spec!r} (data sources are JSONL or .parquet "
                               f"files, save_to_disk folders, globs of them{also})")
    return [_file_source(path, columns)]
