"""Warm starts that ship with the repository: ``toyworld/shipped/warm-<name>/``, sha256-checked.

A recipe with a ``sha256`` (``toyworld.recipes``) is not built on first use: its folder (weights
+ processor) is in the repository, so every machine starts from the same bytes and no first run
waits for a build. The weights are checked against the recipe's sha256 when they are first
loaded in a process. They are what the recipe builds, rebuilt with

    python -m toyworld.ship warm:tally          # builds warm:tally afresh, copies it here
                                                # and prints the sha256 for toyworld/recipes.py

A build is deterministic on one machine (seeded, one thread); another machine's floating-point
library may round differently, which is why the weights ship instead of being rebuilt.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from srmcr.errors import MissingFileError, UserError
from toyworld.recipes import RECIPES

SHIPPED = Path(__file__).resolve().parent / "shipped"
WEIGHTS = "model.safetensors"
_checked: set[Path] = set()  # folders whose weights matched in this process


class DamagedWeights(UserError, ValueError):
    """Shipped weights whose sha256 is not the recipe's."""


def folder(name: str) -> Path:
    return SHIPPED / f"warm-{name}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped(name: str) -> Path:
    """The checked folder of ``warm:<name>``, whose recipe has a ``sha256``."""
    expected = RECIPES[name].sha256
    out = folder(name)
    if not (out / WEIGHTS).is_file():
        raise MissingFileError(f"warm:{name} ships its weights in {out}, which has no {WEIGHTS}: "
                               f"restore it (git checkout -- {out}) or rebuild it with "
                               f"python -m toyworld.ship warm:{name}")
    if out not in _checked:
        found = sha256(out / WEIGHTS)
        if found != expected:
            raise DamagedWeights(f"{out / WEIGHTS} has sha256 {found[:16]}..., not the recipe's "
                                 f"{expected[:16]}...: the file is damaged or was rebuilt; "
                                 f"restore it (git checkout -- {out}) or, after a rebuild, put "
                                 "its sha256 in toyworld/recipes.py")
        _checked.add(out)
    return out


def build(name: str) -> tuple[Path, str]:
    """Build ``warm:<name>`` afresh (its recipe, ignoring any shipped or cached copy) into
    ``toyworld/shipped/warm-<name>/``; the folder and its weights' sha256."""
    from toyworld.sources import warm_model

    with tempfile.TemporaryDirectory() as cache:
        built = warm_model(name, Path(cache), use_shipped=False)
        out = folder(name)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(built, out)
    return out, sha256(out / WEIGHTS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m toyworld.ship",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="warm:<name>, one of " + ", ".join(
        f"warm:{n}" for n in RECIPES))
    args = parser.parse_args(argv)
    name = args.spec.removeprefix("warm:")
    if name not in RECIPES:
        parser.error(f"unknown warm start {args.spec!r}")
    import torch

    torch.set_num_threads(1)  # the builds are seeded and single-threaded: the same bytes again
    start = time.monotonic()
    out, digest = build(name)
    print(f"warm:{name} built in {(time.monotonic() - start) / 60:.1f} min into {out}\n"
          f"sha256 {digest}: set RECIPES[{name!r}].sha256 to it in toyworld/recipes.py")


if __name__ == "__main__":
    main()
