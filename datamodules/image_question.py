"""``ImageQuestionDataModule``: streamed (image, question[, answer]) records for SR-MCR.

See docs/design.md, "Data". The train stream is infinite (passes reshuffled each time, so DDP ranks
never run out at different steps; ``max_steps`` sets the length); val/test/predict are one
finite pass in file order. Workers report skip counts and stream positions through the batches;
the main process folds them in ``on_after_batch_transfer``, which makes ``skipped`` and
``state_dict()`` describe what the model has actually consumed, not what workers prefetched.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from datamodules.batch import BatchProgress, ImageQuestionBatch, Stage, collate
from datamodules.images import FACTOR
from datamodules.records import (
    REASONS,
    ColumnArgs,
    DecodeArgs,
    Source,
    registered,
    resolve,
)
from datamodules.stream import RecordStream, StreamStart, probe
from srmcr.errors import DataError, MissingFileError, require

__all__ = ["BatchProgress", "ImageQuestionBatch", "ImageQuestionDataModule", "collate"]
STAGES: tuple[Stage, ...] = ("train", "val", "test", "predict")
# Lightning's stage names -> the sources it needs.
_NEEDS: dict[str | None, tuple[Stage, ...]] = {
    "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",),
    None: STAGES,
}


def _validate(batch_size: int, num_workers: int, shuffle_buffer: int, min_pixels: int,
              max_pixels: int, max_question_chars: int, max_bad_fraction: float) -> None:
    require({
        f"batch_size={batch_size}: set it to 1 or more (prompts per step)": batch_size >= 1,
        f"num_workers={num_workers}: set it to 0 or more": num_workers >= 0,
        f"shuffle_buffer={shuffle_buffer}: set it to 0 (no shuffle) or more": shuffle_buffer >= 0,
        f"min_pixels={min_pixels}: set it to 1 or more": min_pixels >= 1,
        f"max_pixels={max_pixels} < min_pixels={min_pixels}: raise max_pixels or lower "
        "min_pixels": max_pixels >= min_pixels,
        f"max_pixels={max_pixels}: set it to {FACTOR * FACTOR} ({FACTOR}x{FACTOR}, one image "
        "token) or more": max_pixels >= FACTOR * FACTOR,
        f"max_question_chars={max_question_chars}: set it to 1 or more": max_question_chars >= 1,
        f"max_bad_fraction={max_bad_fraction}: set it within [0, 1]":
            0.0 <= max_bad_fraction <= 1.0,
    })


def _validate_columns(columns: ColumnArgs) -> None:
    require({f"data.columns.{f.name}={getattr(columns, f.name)!r}: set it to a field name":
             isinstance(getattr(columns, f.name), str) and getattr(columns, f.name).strip() != ""
             for f in fields(columns)})


def _specs(name: str, value: str | list[str] | None) -> list[str]:
    specs = [value] if isinstance(value, str) else list(value or [])
    require({f"data.{name}={value!r}: an empty source string; give a JSONL or Parquet file, a "
             f"save_to_disk folder, a glob or shapes:": all(specs)})
    for spec in specs:
        registered(spec)  # a typo in a registered source's spec fails now, not at setup
    return specs


def _gather(obj: Any) -> list[Any]:
    """``obj`` from every rank (all ranks call state_dict when Lightning saves a checkpoint)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class ImageQuestionDataModule(L.LightningDataModule):
    """Streams image-question records from JSONL, Parquet, ``save_to_disk`` folders or a
    registered source.

    A record has an image, a question and optionally an answer, an id and choices; their field
    names are ``columns`` (default ``image``, ``question``, ``answer``, ``id``, ``choices``). The
    image is a path (relative to ``image_root``, else to the file's folder), encoded bytes, or the
    ``datasets`` ``Image`` feature (a struct of ``bytes`` and ``path``).

    **Choices.** A record with a non-empty ``choices`` list is asked as

        <question>
        A. <first option>
        B. <second option>
        Answer with the option's letter.

    and its answer (a letter, or the text of one option) becomes a ``srmcr.answers.Choice``:
    validation, test and predict count a completion correct when it names that letter or that
    option's text. An answer that is neither is a bad record (``bad_choices``).

    **Images** are decoded to 8-bit RGB: 16-bit greyscale scaled by its bit depth (0..65535 ->
    0..255), transparency composited on white. Their area is scaled into [min_pixels,
    max_pixels] and their short side up to 28 px (what Qwen's processor resizes to anyway), keeping
    the aspect ratio. An image the processor cannot take within those bounds is skipped and
    counted as ``bad_aspect``, not resized: an aspect ratio over 200 (Qwen2-VL's ``smart_resize``
    raises), or over max_pixels / 784 (a short side under 28 px, which the processor would stretch
    past max_pixels). See ``datamodules.images``.

    **Bad records** are skipped and counted per reason (``skipped``): ``bad_json``,
    ``missing_field``, ``missing_image``, ``bad_image``, ``bad_aspect``, ``bad_choices``,
    ``long_question``; the first of each file are found by a probe at ``setup``, before the model
    loads. A Parquet file or saved dataset without the image or question column fails at setup.

    Args:
        train: Training source(s): a JSONL file, a Parquet file (``.parquet``), a folder written
            by ``datasets``' ``save_to_disk``, a glob of those, or a registered ``<kind>:`` source
            (``srmcr.sources``; the toy world's ``shapes:<split>?n=512&size=112&seed=0``);
            several are concatenated (globs in sorted order). The
            stream is infinite: the trainer's ``max_steps`` sets the length.
        val: Validation source(s), same syntax; one pass in file order.
        test: Test source(s), same syntax; one pass in file order.
        predict: Prediction source(s), same syntax; one pass in file order.
        batch_size: Prompts per step (B); each gets G completions.
        num_workers: DataLoader worker processes per rank (0: load in the main process).
        shuffle_buffer: Records held for the streaming shuffle of the train stream (0: no shuffle).
        seed: Seed of the train shuffle, varied per pass and shard.
        image_root: Folder that image paths are relative to; default: each data file's folder.
        min_pixels: Smaller images are scaled up to this area, keeping the aspect ratio.
        max_pixels: Larger images are scaled down to this area, keeping the aspect ratio; set it
            (and min_pixels) to the policy's.
        max_question_chars: Longer questions (with their listed choices) are skipped as bad records.
        max_bad_fraction: Stop with an error once more than this share of the records read are
            bad (checked per rank x worker shard, from its 100th record read on).
        columns: The field (JSON key or column) of each part of a record, e.g.
            ``--data.columns.question=prompt``.
    """

    def __init__(self, train: str | list[str] | None = None, val: str | list[str] | None = None,
                 test: str | list[str] | None = None, predict: str | list[str] | None = None,
                 batch_size: int = 4, num_workers: int = 0, shuffle_buffer: int = 256,
                 seed: int = 0, image_root: Path | None = None, min_pixels: int = 56 * 56,
                 max_pixels: int = 448 * 448, max_question_chars: int = 2000,
                 max_bad_fraction: float = 0.1, columns: ColumnArgs = ColumnArgs()):
        super().__init__()
        _validate(batch_size, num_workers, shuffle_buffer, min_pixels, max_pixels,
                  max_question_chars, max_bad_fraction)
        _validate_columns(columns)
        self.specs: dict[Stage, list[str]] = {
            name: _specs(name, value)
            for name, value in zip(STAGES, (train, val, test, predict), strict=True)}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.max_bad_fraction = max_bad_fraction
        self.decode_args = DecodeArgs(min_pixels, max_pixels, max_question_chars,
                                      None if image_root is None else Path(image_root), columns)
        self.rank, self.world_size = 0, 1
        self._sources: dict[Stage, list[Source]] = {}
        self._probed: set[Stage] = set()
        self._counts: dict[int, dict[str, int]] = {}  # rank -> {"read", *REASONS}
        self._positions: dict[int, tuple[int, int]] = {}  # shard -> (pass, position), train
        self._next_role: dict[int, int] = {}  # rank -> worker role of its next train batch
        self._saved_shards: int | None = None  # shard count of a loaded state
        self._first_pass = 0  # pass of shards without a position

    @property
    def shards(self) -> int:
        return self.world_size * max(self.num_workers, 1)

    def setup(self, stage: str | None = None, *, rank: int | None = None,
              world_size: int | None = None) -> None:
        """Resolve and probe the stage's sources (see ``_probe``), before the model loads.
        ``rank``/``world_size`` override the trainer's (tests)."""
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size
        self.rank = self.rank if rank is None else rank
        self.world_size = self.world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must lie in [0, world_size={self.world_size})")
        require({"data.train=None: fitting needs data.train; set it to a JSONL or Parquet file, "
                 "a save_to_disk folder, a glob or shapes:train":
                 stage != "fit" or bool(self.specs["train"])})
        for name in _NEEDS[stage]:
            self._resolve(name)
            self._probe(name)

    def _resolve(self, name: Stage) -> list[Source]:
        if name not in self._sources:
            try:
                self._sources[name] = [src for spec in self.specs[name]
                                       for src in resolve(spec, self.decode_args.columns)]
            except FileNotFoundError as error:
                raise MissingFileError(f"data.{name}: {error}") from error
            except DataError as error:
                raise DataError(f"data.{name}: {error}") from error
        return self._sources[name]

    def _probe(self, name: Stage) -> None:
        """Read each source up to its first good record: a file of bad records, or of none, fails
        here in seconds, naming its first bad lines, rather than after the model has loaded."""
        if name in self._probed or not self.specs[name]:
            return
        args = (self.decode_args, self.max_bad_fraction)
        try:
            found = [probe(source, *args) for source in self._resolve(name)]
        except DataError as error:
            raise DataError(f"data.{name}: {error}") from error
        if not any(found):
            raise DataError(f"data.{name}: no record in {', '.join(map(str, self._sources[name]))}"
                            ": the files are empty")
        self._probed.add(name)

    def _loader(self, stage: Stage) -> DataLoader:
        require({f"data.{stage}=None: no {stage} data; set data.{stage} to a JSONL or Parquet "
                 "file, a save_to_disk folder, a glob or shapes:": bool(self.specs[stage])})
        stream = RecordStream(
            self._resolve(stage), self.decode_args, rank=self.rank, world_size=self.world_size,
            num_workers=self.num_workers, infinite=stage == "train",
            shuffle_buffer=self.shuffle_buffer, seed=self.seed,
            max_bad_fraction=self.max_bad_fraction,
            start=self._train_start() if stage == "train" else None)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=partial(collate, stage=stage))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if self.specs["val"] else []  # []: Lightning skips val

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def transfer_batch_to_device(self, batch: Any, device: torch.device,
                                 dataloader_idx: int) -> Any:
        return batch  # PIL images stay on the CPU; the processor makes tensors in the module

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, ImageQuestionBatch):
            self.observe(batch)
        return batch

    def observe(self, batch: ImageQuestionBatch) -> None:
        """Fold one consumed batch into the counters and the train position. Lightning calls it
        (via ``on_after_batch_transfer``); without a trainer, call it once per batch."""
        p = batch.progress
        counts = self._counts.setdefault(self.rank, dict.fromkeys(("read", *REASONS), 0))
        counts["read"] += p.read
        for reason, n in p.skipped.items():
            counts[reason] += n
        if p.stage == "train":
            self._positions[p.shard] = (p.pass_index, p.position)
            workers = max(self.num_workers, 1)
            self._next_role[self.rank] = (p.shard - self.rank * workers + 1) % workers

    @property
    def skipped(self) -> dict[str, int]:
        """Bad records skipped by this rank so far, per reason (log as data/skipped/<reason>)."""
        counts = self._counts.get(self.rank, {})
        return {reason: counts.get(reason, 0) for reason in REASONS}

    @property
    def read(self) -> int:
        """Records decoded by this rank so far, good and bad."""
        return self._counts.get(self.rank, {}).get("read", 0)

    def _match_layout(self) -> None:
        """Positions saved under another shard count cannot be mapped: start a fresh pass."""
        if self._saved_shards in (None, self.shards):
            return
        warnings.warn(f"the data position was saved with {self._saved_shards} shards (ranks x "
                      f"workers), now {self.shards}: the train stream restarts at a new pass")
        self._first_pass = 1 + max((p for p, _ in self._positions.values()),
                                   default=self._first_pass - 1)
        self._positions, self._next_role, self._saved_shards = {}, {}, self.shards

    def _train_start(self) -> StreamStart:
        self._match_layout()
        return StreamStart(dict(self._positions), self._next_role.get(self.rank, 0),
                           self._first_pass)

    def state_dict(self) -> dict[str, Any]:
        """Train position per shard, next worker role and counts per rank, gathered from every
        rank (a collective under DDP: Lightning calls it on all ranks when it checkpoints)."""
        self._match_layout()
        workers = max(self.num_workers, 1)
        mine = range(self.rank * workers, (self.rank + 1) * workers)
        parts = _gather({"positions": {s: p for s, p in self._positions.items() if s in mine},
                         "next_role": {self.rank: self._next_role.get(self.rank, 0)},
                         "counts": {self.rank: dict(self._counts.get(self.rank, {}))}})
        state: dict[str, Any] = {"shards": self.shards, "first_pass": self._first_pass,
                                 "positions": {}, "next_role": {}, "counts": {}}
        for part in parts:
            for key in ("positions", "next_role", "counts"):
                state[key].update(part[key])
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_shards, self._first_pass = state_dict["shards"], state_dict["first_pass"]
        self._positions = {int(s): (int(p[0]), int(p[1]))
                           for s, p in state_dict["positions"].items()}
        self._next_role = {int(r): int(role) for r, role in state_dict["next_role"].items()}
        self._counts = {int(r): dict(c) for r, c in state_dict["counts"].items()}
