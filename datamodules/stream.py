"""The record stream behind every dataloader: shard, shuffle, fast-forward, decode, count.

Global record ``i`` (non-blank lines of all sources, concatenated) belongs to shard
``i % shards``, shard = ``rank * num_workers + worker role``, so ranks × workers read every
record exactly once per pass. A pass's order is a pure function of (seed, pass, shard): resuming
regenerates it and skips the first ``position`` raw records without decoding them. Each yielded
``Tagged`` example carries the skip counts since the previous one, so the main process sees the
counters of every worker through the batches.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from datamodules.records import BadRecord, DecodeArgs, Example, Source
from srmcr.errors import ConfigError, DataError

log = logging.getLogger(__name__)
T = TypeVar("T")
MIN_READ_FOR_FRACTION = 100  # below this many records the bad fraction is too noisy to act on
SHOWN_BAD_LINES = 5


@dataclass(frozen=True)
class Tagged:
    example: Example
    shard: int
    pass_index: int
    position: int  # raw records of this shard's pass consumed, this one included
    read: int  # records decoded since the previous Tagged of this shard (good and bad)
    skipped: dict[str, int]  # per reason, since the previous Tagged of this shard


@dataclass(frozen=True)
class StreamStart:
    """Where each shard resumes: {shard: (pass, raw records to skip)}, and which worker role the
    DataLoader's worker 0 plays, so that its round-robin continues where it stopped."""

    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    role_offset: int = 0
    first_pass: int = 0  # the pass of shards without a position


def shuffled(items: Iterable[T], buffer: int, rng: random.Random) -> Iterator[T]:
    """Buffer shuffle: memory holds at most ``buffer`` items; ``buffer <= 1`` keeps the order."""
    held: list[T] = []
    for item in items:
        if len(held) < max(buffer, 1):
            held.append(item)
            continue
        j = rng.randrange(len(held))
        yield held[j]
        held[j] = item
    if buffer > 1:
        rng.shuffle(held)
    yield from held


class _Ledger:
    """Per-shard counts, rate-limited warnings and the give-up rules."""

    def __init__(self, names: str, max_bad_fraction: float, *, quiet: bool = False):
        self.names, self.max_bad_fraction, self.quiet = names, max_bad_fraction, quiet
        self.read = self.bad = self.pass_read = self.pass_good = 0
        self.first_bad: list[str] = []
        self.delta_read = 0  # since the last yielded example
        self.delta_skipped: dict[str, int] = {}

    def _count_read(self) -> None:
        self.read += 1
        self.pass_read += 1
        self.delta_read += 1

    def good(self) -> None:
        self._count_read()
        self.pass_good += 1
        self._check_fraction()

    def skip(self, label: str, bad: BadRecord) -> None:
        self._count_read()
        self.bad += 1
        self.delta_skipped[bad.reason] = self.delta_skipped.get(bad.reason, 0) + 1
        if len(self.first_bad) < SHOWN_BAD_LINES:
            self.first_bad.append(f"{label}: {bad.reason}")
        if not self.quiet and (self.bad <= 10 or self.bad % 100 == 0):  # first 10, every 100th
            log.warning("skipping %s: %s (%d bad of %d read in this shard)",
                        label, bad, self.bad, self.read)
        self._check_fraction()

    def take(self) -> tuple[int, dict[str, int]]:
        deltas = self.delta_read, self.delta_skipped
        self.delta_read, self.delta_skipped = 0, {}
        return deltas

    def end_pass(self, whole: bool) -> None:
        """``whole``: the pass was read from its start (not resumed in the middle)."""
        if whole and self.pass_read and not self.pass_good:
            raise DataError(f"no good record in a full pass over {self.names}: all "
                            f"{self.pass_read} read are bad. First bad lines: {self._lines()}. "
                            "Each record needs an image and a question (named by data.columns).")
        self.pass_read = self.pass_good = 0

    def _check_fraction(self) -> None:
        if self.read >= MIN_READ_FOR_FRACTION and self.bad > self.max_bad_fraction * self.read:
            raise DataError(
                f"{self.bad} of {self.read} records read from {self.names} are bad, more than "
                f"max_bad_fraction={self.max_bad_fraction}. First bad lines: {self._lines()}. "
                "Fix or drop those records, or raise max_bad_fraction.")

    def _lines(self) -> str:
        return "; ".join(sorted(self.first_bad, key=_file_order))  # read order may be shuffled


class RecordStream(IterableDataset):
    """Examples of one rank, sharded over its DataLoader workers (see module docstring)."""

    def __init__(self, sources: list[Source], args: DecodeArgs, *, rank: int, world_size: int,
                 num_workers: int, infinite: bool, shuffle_buffer: int, seed: int,
                 max_bad_fraction: float, start: StreamStart | None = None):
        super().__init__()
        self.sources, self.args = sources, args
        self.rank, self.world_size, self.num_workers = rank, world_size, max(num_workers, 1)
        self.infinite, self.shuffle_buffer, self.seed = infinite, shuffle_buffer, seed
        self.max_bad_fraction, self.start = max_bad_fraction, start or StreamStart()

    @property
    def shards(self) -> int:
        return self.world_size * self.num_workers

    def shard(self) -> int:
        info = get_worker_info()
        if info is not None and info.num_workers != self.num_workers:
            raise ValueError(f"the stream was built for {self.num_workers} workers per rank but "
                             f"runs under {info.num_workers}: records would be missed or repeated")
        worker = info.id if info is not None else 0
        return self.rank * self.num_workers + (worker + self.start.role_offset) % self.num_workers

    def raws(self, shard: int) -> Iterator[tuple[Source, str, Any]]:
        index = 0
        for source in self.sources:
            for label, payload in source.raws():
                if index % self.shards == shard:
                    yield source, label, payload
                index += 1

    def _pass(self, shard: int, pass_index: int, skip: int, ledger: _Ledger) -> Iterator[Tagged]:
        raws = self.raws(shard)
        if self.infinite:  # evaluation passes keep the file order
            rng = random.Random(f"{self.seed}:{pass_index}:{shard}:{self.shards}")
            raws = shuffled(raws, self.shuffle_buffer, rng)
        for position, (source, label, payload) in enumerate(raws, start=1):
            if position <= skip:
                continue  # fast-forward on resume: already consumed, no decode
            try:
                example = source.decode(label, payload, self.args)
            except BadRecord as bad:
                ledger.skip(label, bad)
                continue
            ledger.good()
            yield Tagged(example, shard, pass_index, position, *ledger.take())
        # Without a skip every raw record is decoded, so nothing read means an empty shard, which
        # would spin forever in an infinite stream.
        if not skip and not ledger.pass_read and self.infinite:
            raise ConfigError(f"shard {shard} of {self.shards} (ranks x workers) got no record "
                              f"from {self._names()}: fewer records than shards; lower num_workers")
        ledger.end_pass(whole=not skip)

    def __iter__(self) -> Iterator[Tagged]:
        shard = self.shard()
        ledger = _Ledger(self._names(), self.max_bad_fraction)
        if not self.infinite:
            yield from _with_trailing(self._pass(shard, 0, 0, ledger), ledger)
            return
        pass_index, skip = self.start.positions.get(shard, (self.start.first_pass, 0))
        while True:
            yield from self._pass(shard, pass_index, skip, ledger)
            pass_index, skip = pass_index + 1, 0

    def _names(self) -> str:
        names = [str(s) for s in self.sources[:3]]
        more = len(self.sources) - len(names)
        return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def probe(source: Source, args: DecodeArgs, max_bad_fraction: float) -> bool:
    """Read ``source`` in file order up to its first good record, quietly: ``DataError`` (naming
    the first bad lines) if there is none or the bad-fraction check fires first; False if it holds
    no record. Run before the model loads, so bad data fails in seconds, not after minutes."""
    ledger = _Ledger(str(source), max_bad_fraction, quiet=True)
    for label, payload in source.raws():
        try:
            source.decode(label, payload, args)
        except BadRecord as bad:
            ledger.skip(label, bad)
            continue
        return True
    read = ledger.pass_read
    ledger.end_pass(whole=True)
    return read > 0


def _file_order(line: str) -> tuple[str, int]:
    """``"path:17: reason"`` -> ``("path", 17)``: sorts bad lines by file, then line number."""
    label = line.rsplit(": ", 1)[0]
    name, _, number = label.rpartition(":")
    return (name, int(number)) if number.isdigit() else (label, -1)


def _with_trailing(items: Iterator[Tagged], ledger: _Ledger) -> Iterator[Tagged]:
    """Hold each example back by one, so the last one of a finite pass also carries the counts
    of the bad records after it (nothing else would report them to the main process)."""
    held = next(items, None)
    for item in items:
        yield held
        held = item
    if held is not None:
        read, skipped = ledger.take()
        merged = {r: held.skipped.get(r, 0) + skipped.get(r, 0) for r in {*held.skipped, *skipped}}
        yield Tagged(held.example, held.shard, held.pass_index, held.position,
                     held.read + read, merged)
