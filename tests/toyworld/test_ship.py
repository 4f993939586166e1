"""Shipped warm starts: used as they are, never rebuilt, and refused when their bytes changed."""

from __future__ import annotations

import dataclasses

import pytest

from srmcr.errors import MissingFileError
from toyworld import ship, warmup
from toyworld.recipes import RECIPES
from toyworld.sources import warm_model


@pytest.fixture
def shipped_tiny(tmp_path, monkeypatch):
    """warm:tiny as if it shipped: a folder under a temporary SHIPPED with known weights."""
    monkeypatch.setattr(ship, "SHIPPED", tmp_path)
    monkeypatch.setattr(ship, "_checked", set())
    out = ship.folder("tiny")
    out.mkdir()
    (out / ship.WEIGHTS).write_bytes(b"weights")
    (out / "config.json").write_text("{}")
    monkeypatch.setitem(RECIPES, "tiny", dataclasses.replace(
        RECIPES["tiny"], sha256=ship.sha256(out / ship.WEIGHTS)))
    return out


def test_a_shipped_recipe_loads_its_folder_and_builds_nothing(shipped_tiny, tmp_path,
                                                              monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a shipped warm start was built")
    monkeypatch.setattr(warmup, "build", no_build)
    assert warm_model("tiny", tmp_path / "cache") == shipped_tiny


def test_changed_weights_are_refused_in_one_line(shipped_tiny, tmp_path):
    (shipped_tiny / ship.WEIGHTS).write_bytes(b"weightz")
    with pytest.raises(ship.DamagedWeights, match=r"has sha256 .* not the recipe's .*git checkout"):
        warm_model("tiny", tmp_path / "cache")


def test_missing_weights_say_how_to_restore_them(shipped_tiny, tmp_path):
    (shipped_tiny / ship.WEIGHTS).unlink()
    with pytest.raises(MissingFileError, match=r"python -m toyworld.ship warm:tiny"):
        warm_model("tiny", tmp_path / "cache")


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.sha256])
def test_the_shipped_weights_are_the_recipes(name):
    assert ship.sha256(ship.folder(name) / ship.WEIGHTS) == RECIPES[name].sha256
