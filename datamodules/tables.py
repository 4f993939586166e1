"""Arrow-backed sources: Parquet files and folders written by ``datasets``' ``save_to_disk``.

Both stream record batches with pyarrow, so memory holds a few pages and ``BATCH_ROWS`` rows,
whatever the file's size: records are plain dicts (``{"image": {"bytes":
..., "path": ...}, "question": ...}``) decoded by ``records.example``. Only the mapped columns are
read from Parquet. A missing image or question column fails when the source is opened, naming the
file, the column and the columns it has.

A ``save_to_disk`` folder holds ``state.json`` (its Arrow files, in order, under ``_data_files``),
``dataset_info.json`` and the ``data-*.arrow`` files in Arrow's IPC stream format, the layout
``datasets.load_from_disk`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from datamodules.records import ColumnArgs, DecodeArgs, Example, example
from srmcr.errors import DataError, MissingFileError

BATCH_ROWS = 64  # rows turned into Python records at a time
# Pages read through a 1 MiB buffer; pyarrow's default pre-buffering would instead load a whole
# row group (up to ~100 MB in files written by datasets) before the first batch.
READ_BUFFER = 1 << 20
_REQUIRED = ("image", "question")
_STATE, _DICT = "state.json", "dataset_dict.json"


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (path / _STATE).is_file()


def _columns(where: Path, schema: pa.Schema, columns: ColumnArgs) -> tuple[str, ...]:
    """The mapped columns ``schema`` has; DataError if it lacks the image or question column."""
    for name in _REQUIRED:
        column = getattr(columns, name)
        if column not in schema.names:
            raise DataError(f"{where} has no column {column!r} (data.columns.{name}); its columns: "
                            f"{', '.join(schema.names)}. Set data.columns.{name} to the one that "
                            f"holds the {name}")
    wanted = dict.fromkeys(astuple(columns))  # in order, without duplicates
    return tuple(name for name in wanted if name in schema.names)


def _rows(batches: Iterator[pa.RecordBatch], label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            yield f"{label}:{row}", record
            row += 1


@dataclass(frozen=True)
class ParquetSource:
    path: Path
    columns: tuple[str, ...]  # read only these

    @classmethod
    def open(cls, path: Path, columns: ColumnArgs) -> ParquetSource:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{path} is not a readable Parquet file: {error}") from error
        return cls(path, _columns(path, schema, columns))

    def __str__(self) -> str:
        return str(self.path)

    def raws(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with pq.ParquetFile(self.path, buffer_size=READ_BUFFER, pre_buffer=False) as file:
            yield from _rows(file.iter_batches(BATCH_ROWS, columns=list(self.columns),
                                               use_threads=False), str(self.path))

    def decode(self, label: str, raw: dict[str, Any], args: DecodeArgs) -> Example:
        return example(raw, label, self.path.parent, args)


@dataclass(frozen=True)
class ArrowDatasetSource:
    folder: Path
    files: tuple[Path, ...]  # the Arrow files, in the order of state.json
    columns: tuple[str, ...]  # decode only these

    @classmethod
    def open(cls, folder: Path, columns: ColumnArgs) -> ArrowDatasetSource:
        if not (folder / _STATE).is_file():
            if (folder / _DICT).is_file():
                splits = json.loads((folder / _DICT).read_text()).get("splits", [])
                raise MissingFileError(f"{folder} holds a DatasetDict: give one split's folder, "
                                       f"e.g. {folder / (splits[0] if splits else 'train')} "
                                       f"(splits: {', '.join(splits)})")
            raise MissingFileError(f"{folder} is a folder without {_STATE}: not a dataset "
                                   "written by datasets' save_to_disk")
        try:
            state = json.loads((folder / _STATE).read_text())
            files = tuple(folder / f["filename"] for f in state["_data_files"])
            with pa.OSFile(str(files[0])) as f:
                schema = pa.ipc.open_stream(f).schema
        except (KeyError, IndexError, TypeError, ValueError, OSError,
                pa.ArrowException) as error:
            raise DataError(f"{folder}: cannot read the saved dataset ({error!r}); write it "
                            "again with Dataset.save_to_disk") from error
        return cls(folder, files, _columns(folder, schema, columns))

    def __str__(self) -> str:
        return str(self.folder)

    def raws(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return _rows(self._batches(), str(self.folder))

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for path in self.files:
            for batch in _ipc_batches(path):
                for start in range(0, batch.num_rows, BATCH_ROWS):
                    yield batch.slice(start, BATCH_ROWS).select(self.columns)

    def decode(self, label: str, raw: dict[str, Any], args: DecodeArgs) -> Example:
        return example(raw, label, self.folder, args)


def _ipc_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC stream file, each from a fresh memory map: the pages of
    the batches already read leave this process's resident memory (one map over the whole file
    would keep them all), and the file's pages stay shared by every worker and rank."""
    with pa.memory_map(str(path)) as f:
        schema = pa.ipc.read_schema(pa.ipc.MessageReader.open_stream(f).read_next_message())
        offset = f.tell()
    while True:
        with pa.memory_map(str(path)) as f:
            f.seek(offset)
            try:
                message = pa.ipc.read_message(f)
            except EOFError:
                return
            offset = f.tell()
            yield pa.ipc.read_record_batch(message, schema)
