"""Checkpoint files that no failure breaks: written atomically, checked before they are loaded;
and a run's folder checked for writing before the model loads (``check_writable``).

``AtomicCheckpointIO`` (``main.py`` installs it in place of Lightning's ``TorchCheckpointIO``)
writes a checkpoint into a temporary file in the checkpoint's own folder, then renames it over the
final name (``os.replace``, atomic within one filesystem). A write that fails (a full disk, a
read-only folder) leaves the file of that name as it was and raises ``UnwritableError``, one line
that names the file and the OS's reason. Lightning's own writer builds the file in the system's
temporary folder and moves it, a copy across filesystems that a full disk cuts short under the
final name. ``save_or_warn`` is how the callbacks save: a failed write warns and changes nothing.

``read_problem`` says, cheaply, why a file cannot be resumed from (tensors are memory-mapped, not
read); ``main.py`` asks it before the model loads, for ``--ckpt_path`` (``check_ckpt_path``, and
``resume_point`` for ``--ckpt_path last``).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from srmcr.errors import (
    MissingFileError,
    UnreadableCheckpointError,
    UnwritableError,
    UserError,
)

log = logging.getLogger(__name__)


def os_reason(error: OSError) -> str:
    """``No space left on device`` (the OS's words), else the error's message."""
    return error.strerror or str(error) or type(error).__name__


def write_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, flushed to disk, then renamed over
    ``path``; on any failure the temporary file is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # Not mkstemp, whose files are private (0600): this one gets the mode any new file gets.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local files atomically and reports unreadable ones as
    ``UnreadableCheckpointError`` (remote URLs keep Lightning's own writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            write_atomically(checkpoint, Path(path))
        except OSError as error:
            raise UnwritableError(f"could not write checkpoint {path}: {os_reason(error)}") \
                from error

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file() and "://" not in str(path):
            raise MissingFileError(f"checkpoint {path}: no such file")
        try:
            return super().load_checkpoint(path, map_location, weights_only)
        except UserError:
            raise
        except Exception as error:  # whatever torch.load makes of a damaged file: one line
            raise UnreadableCheckpointError(
                f"cannot read checkpoint {path}: {read_problem(Path(path)) or _first(error)}") \
                from error


def _first(error: BaseException) -> str:
    """The first sentence of an error's message (torch's run to several lines of advice)."""
    lines = str(error).strip().splitlines()
    return lines[0].split(". ")[0] if lines else type(error).__name__


def read_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, in a few words, or None when it loads and holds a
    global step and weights. Only the zip directory and the pickled structure are read."""
    if not path.is_file():
        return "no such file"
    if not zipfile.is_zipfile(path):
        return "no zip directory at its end: the file is truncated or not a checkpoint"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # any failure to load is the answer asked for
        return f"{_first(error)}: the file is damaged or not a checkpoint"
    if not isinstance(checkpoint, dict) or not {"global_step", "state_dict"} <= checkpoint.keys():
        return "not a Lightning checkpoint (no global_step or state_dict)"
    return None


def checkpoint_step(path: Path) -> int | None:
    """The global step ``path`` holds, None if it cannot be read."""
    if read_problem(path) is not None:
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def newest_readable(folder: Path, exclude: Path | None = None) -> tuple[Path, int] | None:
    """The readable checkpoint of ``folder`` with the highest global step (at equal steps
    ``last.ckpt``, then a periodic one, then ``best.ckpt``), and that step."""
    rank = {"last.ckpt": 2, "best.ckpt": 0}
    found = []
    for path in folder.glob("*.ckpt"):
        step = None if path == exclude else checkpoint_step(path)
        if step is not None:
            found.append((step, rank.get(path.name, 1), path))
    if not found:
        return None
    step, _, path = max(found)
    return path, step


def check_ckpt_path(ckpt_path: str | None) -> None:
    """Raise ``MissingFileError`` or ``UnreadableCheckpointError`` (naming the newest readable
    checkpoint beside it) unless ``--ckpt_path`` names a file that can be loaded, or none (also
    Lightning's names: "last", "best", "hpc", "registry:...", and URLs)."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or \
            ckpt_path.startswith("registry") or "://" in ckpt_path:
        return
    path = Path(ckpt_path)
    problem = read_problem(path)
    if problem == "no such file":
        raise MissingFileError(f"--ckpt_path {path}: no such checkpoint file")
    if problem is not None:
        other = newest_readable(path.parent, exclude=path)
        hint = "no other checkpoint beside it can be read" if other is None else \
            f"the newest readable one beside it is {other[0]} (step {other[1]})"
        raise UnreadableCheckpointError(f"--ckpt_path {path}: cannot read this checkpoint "
                                        f"({problem}); {hint}")


def latest_run(runs: Path) -> Path:
    """The newest ``version_*`` folder under ``runs`` that has ``checkpoints/last.ckpt``."""
    found = sorted((p.parent.parent for p in runs.glob("version_*/checkpoints/last.ckpt")),
                   key=lambda p: int(p.name.removeprefix("version_")) if
                   p.name.removeprefix("version_").isdigit() else -1)
    if not found:
        raise MissingFileError(f"--ckpt_path last: no {runs}/version_*/checkpoints/last.ckpt "
                               "to resume from; pass a checkpoint path instead")
    return found[-1]


def resume_point(folder: Path) -> Path:
    """What ``--ckpt_path last`` resumes from in a run's ``checkpoints`` folder: ``last.ckpt``, or
    when it cannot be read the newest checkpoint that can, with a warning naming what it skips."""
    last = folder / "last.ckpt"
    problem = read_problem(last)
    if problem is None:
        return last
    other = newest_readable(folder, exclude=last)
    if other is None:
        raise UnreadableCheckpointError(f"--ckpt_path last: cannot read {last} ({problem}), nor "
                                        f"any other checkpoint in {folder}")
    log.warning("warning: --ckpt_path last: cannot read %s (%s); resuming from %s (step %d), the "
                "newest checkpoint that can be read", last, problem, other[0], other[1])
    return other[0]


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """``<log dir>/checkpoints``, where ``ModelCheckpoint`` puts its files: beside the first
    logger's run, else under the trainer's root folder (rank 0's choice, on every rank)."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) \
            else f"version_{logger.version}"
        run = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version
    else:
        run = Path(trainer.default_root_dir)
    return Path(trainer.strategy.broadcast(str(run / "checkpoints"), src=0))


def save_or_warn(trainer: L.Trainer, path: Path, then: str = "training continues") -> bool:
    """``trainer.save_checkpoint(path)``, resumable (optimizer and loop state too). A write that
    fails (disk full, read-only) warns in one line, naming the file, the OS's reason and ``then``,
    and returns False; the file of that name keeps what it held. Every rank returns the same."""
    error: OSError | None = None
    try:
        trainer.save_checkpoint(path, weights_only=False)
    except OSError as caught:  # UnwritableError from AtomicCheckpointIO, or another writer's
        error = caught
        trainer.strategy.barrier("Trainer.save_checkpoint")  # the one the failed save skipped
    saved = trainer.strategy.reduce_boolean_decision(error is None, all=True)
    if error is not None:
        message = str(error) if isinstance(error, UnwritableError) else \
            f"could not write checkpoint {path}: {os_reason(error)}"
        kept = f"{path.name} keeps its previous contents" if path.is_file() else \
            f"no {path.name} was written"
        log.warning("warning: %s; %s, %s", message, kept, then)
    return saved


def check_writable(folder: Path) -> None:
    """Raise ``UnwritableError`` unless files can be created in ``folder`` (while it does not
    exist yet: in the nearest folder above it, where it will be created)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == folder.absolute() else f" (it would be created in {existing})"
        raise UnwritableError(f"cannot write the run's outputs to {folder}{where}: "
                              f"{os_reason(error)}; make it writable or set "
                              "--trainer.default_root_dir to a writable folder") from error
