"""Records that break a training step's sampling: found one by one, replaced and counted, so that
no single record ends a run (``SRMCRModule.sample_records``).

The data module already skips the records it can tell are bad (unreadable images, aspect ratios the
processor refuses). Whatever else makes sampling raise for one record (the processor, the chat
template, the tokenizer, the prefill on its image) is found by sampling each record of the failing
batch alone, cheaply (two completions of one token); the ones that still raise are replaced by the
batch's other records and counted as ``unprocessable`` (logged as ``data/skipped/unprocessable``).
A failure no record causes alone (out of memory, a bug) is raised again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

R = TypeVar("R")

log = logging.getLogger(__name__)

REASON = "unprocessable"  # counted and logged as data/skipped/unprocessable


def sample_skipping(sample_rows: Callable[[Sequence[int], bool], R], ids: Sequence[str],
                    step: int) -> tuple[list[int], R | None, int]:
    """``sample_rows(rows, probe=False)`` over the batch (``ids``: its records); when it raises,
    each record alone with ``probe=True`` (a cheap sampling), then the batch again with the ones
    that failed replaced. Returns the rows sampled, the rollout (None when no record is left)
    and how many records were skipped; a failure no record causes alone is raised again."""
    rows = list(range(len(ids)))
    try:
        return rows, sample_rows(rows, False), 0
    except Exception:  # found record by record below, else raised again
        failed = failing_records(lambda row: sample_rows([row], True), rows)
        if not failed:
            raise
    refilled = refill(rows, set(failed))
    warn_skipped(step, failed, ids, len(rows) - len(failed))
    if refilled is None:
        return [], None, len(failed)
    return refilled, sample_rows(refilled, False), len(failed)


def failing_records(try_one: Callable[[int], object], rows: Sequence[int]) -> dict[int, str]:
    """``try_one(row)`` for each row alone: the rows that raise, with the error in one line."""
    failed = {}
    for row in rows:
        try:
            try_one(row)
        except Exception as error:  # any error of one record alone is that record's: it is named
            lines = str(error).strip().splitlines() or [""]
            failed[row] = f"{type(error).__name__}: {lines[0]}"[:300]
    return failed


def refill(rows: Sequence[int], bad: set[int]) -> list[int] | None:
    """``rows`` with each bad one replaced by the good ones in turn, so the batch keeps its size
    (every rank of a DDP run then runs the same passes); None when no row is good."""
    good = [r for r in rows if r not in bad]
    if not good:
        return None
    spare = iter(good * len(rows))
    return [r if r not in bad else next(spare) for r in rows]


def warn_skipped(step: int, failed: dict[int, str], ids: Sequence[str], left: int) -> None:
    """One warning line per skipped record: its id and what sampling raised."""
    for row, error in failed.items():
        log.warning("warning: step %d: record %s skipped, sampling fails on it (%s); %d of the "
                    "batch's %d records left", step, ids[row], error, left, len(ids))
