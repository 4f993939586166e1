"""The toy world's sources: ``tiny:<size>``, ``warm:<name>`` models; ``shapes:``, ``tally:`` data.

``register`` is the ``srmcr.sources`` entry point (pyproject.toml): the names resolve wherever
srmcr is installed, from ``main.py`` or from Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from datamodules.records import BadRecord, DecodeArgs, Example, fit_pixels
from srmcr import sources
from srmcr.errors import ConfigError
from toyworld import tally, tiny
from toyworld.recipes import RECIPES, WarmRecipe
from toyworld.shapes import make_record

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from toyworld.shapes import ShapesRecord
    from toyworld.traces import Trace, TraceDataModule, TraceMix

SHAPES_PREFIX, TALLY_PREFIX = "shapes:", "tally:"


def parse_query(spec: str, prefix: str, keys: dict[str, type], example: str) -> tuple[str, dict]:
    """``<prefix><split>[?key=value&...]`` -> (split, {key: value}) with the values converted by
    ``keys``; a ``ConfigError`` that says what is wrong otherwise."""
    split, _, query = spec[len(prefix):].partition("?")
    if not split:
        raise ConfigError(f"{spec!r}: write the split, e.g. '{prefix}train{example}'")
    try:
        pairs = parse_qsl(query, strict_parsing=bool(query))
        unknown = sorted({key for key, _ in pairs} - set(keys))
        if unknown:
            raise ConfigError(f"{spec!r}: unknown keys {unknown}; allowed: {list(keys)}")
        return split, {key: keys[key](value) for key, value in pairs}
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{spec!r}: expected '{example}' ({error})") from error


@dataclass(frozen=True)
class ShapesSource:
    split: str
    n: int = 512
    size: int = 112
    seed: int = 0

    def __str__(self) -> str:
        return f"{SHAPES_PREFIX}{self.split}?n={self.n}&size={self.size}&seed={self.seed}"

    def raws(self) -> Iterator[tuple[str, int]]:
        for index in range(self.n):
            yield f"{SHAPES_PREFIX}{self.split}:{index}", index

    def decode(self, label: str, raw: int, args: DecodeArgs) -> Example:
        record = make_record(self.seed, self.split, raw, self.size)
        return _example(record, label, args)

    def trace(self, index: int, mix: TraceMix) -> tuple[ShapesRecord, Trace]:
        """Record ``index`` with a warm-up trace written for it (``toyworld.traces``)."""
        from toyworld.traces import make_trace

        return make_trace(self.seed, self.split, index, mix, self.size)


def _example(record, label: str, args: DecodeArgs) -> Example:
    if len(record.question) > args.max_question_chars:
        raise BadRecord("long_question", f"{len(record.question)} characters")
    image = fit_pixels(record.image, args.min_pixels, args.max_pixels)
    return Example(image, record.question, record.answer, record.id, label)


def parse_shapes(spec: str) -> ShapesSource:
    """``shapes:<split>[?n=512&size=112&seed=0]`` -> ShapesSource; ConfigError says what is
    wrong."""
    split, params = parse_query(spec, SHAPES_PREFIX, {"n": int, "size": int, "seed": int},
                                "?n=512&size=112&seed=0")
    source = ShapesSource(split, **params)
    if source.n < 1 or source.size < 8:
        raise ConfigError(f"{spec!r}: n must be >= 1 and size >= 8")
    return source


@dataclass(frozen=True)
class TallySource:
    """The tally world (``toyworld.tally``): ``level=base`` is the warm-up's difficulty,
    ``level=frontier`` one notch harder."""

    split: str
    n: int = 512
    seed: int = 0
    level: tally.Level = "frontier"
    size: int = 112

    def __str__(self) -> str:
        return (f"{TALLY_PREFIX}{self.split}?n={self.n}&seed={self.seed}&level={self.level}"
                f"&size={self.size}")

    def raws(self) -> Iterator[tuple[str, int]]:
        for index in range(self.n):
            yield f"{TALLY_PREFIX}{self.split}:{self.level}:{index}", index

    def decode(self, label: str, raw: int, args: DecodeArgs) -> Example:
        record = tally.make_record(self.seed, self.split, raw, self.level, self.size)
        return _example(record, label, args)

    def trace(self, index: int, mix: TraceMix) -> tuple[tally.TallyRecord, Trace]:
        """Record ``index`` with a clean warm-up trace (the tally world has no flawed ones)."""
        from toyworld.traces import Trace

        record, text = tally.make_trace(self.seed, self.split, index, self.level, self.size)
        return record, Trace(text, record.answer, True, "clean")


def parse_tally(spec: str) -> TallySource:
    """``tally:<split>[?n=512&seed=0&level=frontier&size=112]`` -> TallySource."""
    split, params = parse_query(spec, TALLY_PREFIX,
                                {"n": int, "seed": int, "level": str, "size": int},
                                "?n=512&seed=0&level=frontier")
    source = TallySource(split, **params)
    if source.n < 1 or source.level not in tally.LEVELS or source.size < 8:
        raise ConfigError(f"{spec!r}: n must be >= 1, level one of {list(tally.LEVELS)} and "
                          "size >= 8")
    return source


def warm_model(name: str, cache_dir: Path, use_shipped: bool = True) -> Path:
    """The folder of ``warm:<name>``: ``tiny:<size>`` warmed up on traces (its vision tower first
    pre-trained on ``toyworld.perception`` targets when the recipe says so). A recipe with a
    ``sha256`` ships its folder in the repository (``toyworld.ship``, checked at load); the
    others are built once and cached. Registered as the builder of ``warm:`` specs."""
    if use_shipped and RECIPES[name].sha256 is not None:
        from toyworld import ship

        return ship.shipped(name)
    from toyworld import warmup  # here: the model stack, only when a build is needed
    from toyworld.traces import TRACE_VERSION

    version = tally.TALLY_VERSION if RECIPES[name].world == "tally" else TRACE_VERSION
    return warmup.cached(name, cache_dir, warm_data, data_version=version,
                         vision_data=warm_vision_data)


def warm_data(recipe: WarmRecipe) -> TraceDataModule:
    """The traces ``recipe`` warms the language model up on: ``steps x batch_size`` of its
    world's ``warmup`` split (the tally world's base level), with its share of clean ones."""
    from toyworld.traces import TraceDataModule, TraceMix

    n = recipe.steps * recipe.batch_size
    train = f"tally:warmup?n={n}&seed={recipe.seed}&level=base" if recipe.world == "tally" \
        else f"shapes:warmup?n={n}&seed={recipe.seed}"
    return TraceDataModule(train=train, val=None, batch_size=recipe.batch_size,
                           max_pixels=recipe.max_pixels, mix=TraceMix(clean=recipe.clean))


def warm_vision_data(recipe: WarmRecipe) -> DataLoader:
    """The loader ``recipe`` pre-trains the vision tower on: ``vision_steps`` batches of its
    world's ``perception`` split, each image with its tokens' targets."""
    from toyworld.perception import perception_loader

    n = recipe.vision_steps * recipe.vision_batch_size
    side = int(recipe.max_pixels ** 0.5)
    # The frontier's crowded scenes: the most shapes, hence targets, per image.
    source = TallySource("perception", n=n, seed=recipe.seed, size=side) \
        if recipe.world == "tally" else ShapesSource("perception", n=n, size=side,
                                                     seed=recipe.seed)
    return perception_loader(source, recipe.vision_batch_size)


def register() -> None:
    """Register ``tiny:``, ``warm:``, ``shapes:`` and ``tally:`` (the ``srmcr.sources`` entry
    point)."""
    sources.register_model("tiny", tiny.cached, tuple(tiny.SPECS))
    sources.register_model("warm", warm_model, tuple(RECIPES),
                           architecture=lambda name: f"tiny:{RECIPES[name].base}")
    sources.register_data("shapes", parse_shapes)
    sources.register_data("tally", parse_tally)
