"""Named sources: ``<kind>:<name>`` specs for models (``policy.model``) and data
(``data.train``...).

A package that provides such sources registers them here, from Python (``register_model``,
``register_data``) or through the ``srmcr.sources`` entry-point group: each entry point names a
function without arguments that makes those calls, run once, on the first lookup. The project's
own toy world registers ``tiny:``, ``warm:`` and ``shapes:`` that way (``toyworld.sources``), so
the names work wherever srmcr is installed, with or without ``main.py``, and the method never
imports the toy world.

    from srmcr import sources
    sources.register_model("mine", build=lambda name, cache: my_folder(name), names=("a", "b"))
    PolicyArgs(model="mine:a")  # now a valid spec
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

ENTRY_POINTS = "srmcr.sources"
DEFAULT_CACHE = Path.home() / ".cache" / "srmcr"  # where locally built models are kept


@dataclass(frozen=True)
class ModelSource:
    """Builds ``<kind>:<name>`` model folders (weights + processor) on this machine."""

    build: Callable[[str, Path], Path]  # (name, cache_dir) -> the model folder, built once
    names: tuple[str, ...]  # the names it builds
    # A spec with the same config.json that is cheaper to build (the memory planner reads only
    # the architecture); None: build the model itself.
    architecture: Callable[[str], str] | None = None


@dataclass(frozen=True)
class DataSource:
    """Turns ``<kind>:<rest>`` data specs into record sources for ``ImageQuestionDataModule``:
    objects with ``raws()`` and ``decode(label, raw, args)`` (see ``datamodules.records``)."""

    parse: Callable[[str], Any]  # the whole spec -> a source; raises ConfigError on a bad one


_MODELS: dict[str, ModelSource] = {}
_DATA: dict[str, DataSource] = {}
_loaded = False


def register_model(kind: str, build: Callable[[str, Path], Path], names: Sequence[str],
                   architecture: Callable[[str], str] | None = None) -> None:
    """Make ``<kind>:<name>`` a valid ``policy.model`` for each of ``names``."""
    _check_kind(kind)
    _MODELS[kind] = ModelSource(build, tuple(names), architecture)


def register_data(kind: str, parse: Callable[[str], Any]) -> None:
    """Make ``<kind>:...`` a valid data source spec, parsed by ``parse(spec)``."""
    _check_kind(kind)
    _DATA[kind] = DataSource(parse)


def _check_kind(kind: str) -> None:
    if not kind.isidentifier():
        raise ValueError(f"a source kind is a plain name like 'tiny', not {kind!r}")


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin that looks itself up must not recurse
    for entry in entry_points(group=ENTRY_POINTS):
        entry.load()()


def model_source(kind: str) -> ModelSource | None:
    _load_entry_points()
    return _MODELS.get(kind)


def data_source(kind: str) -> DataSource | None:
    _load_entry_points()
    return _DATA.get(kind)


def model_kinds() -> list[str]:
    _load_entry_points()
    return sorted(_MODELS)


def data_kinds() -> list[str]:
    _load_entry_points()
    return sorted(_DATA)


def spec_kind(spec: str) -> str | None:
    """The ``<kind>`` of a ``<kind>:...`` spec, or None for a path or a hub id. Windows drive
    letters and URLs are not kinds (``C:\\data``, ``https://...``)."""
    kind, sep, rest = spec.partition(":")
    if not sep or len(kind) < 2 or not kind.isidentifier() or rest.startswith("//"):
        return None
    return kind


def build_atomically(final: Path, build_into: Callable[[Path], object]) -> None:
    """Build a folder into a temporary sibling, then rename it to ``final``: concurrent builders
    race safely (the first rename wins, the others use its folder)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
    try:
        build_into(tmp)
        tmp.rename(final)
    except OSError:  # another process renamed its build first: use that one
        if not (final / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
