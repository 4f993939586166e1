"""The toy world's sources: ``tiny:<size>`` and ``warm:<name>`` models, ``shapes:<split>`` data.

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
from toyworld import tiny
from toyworld.recipes import RECIPES, WarmRecipe
from toyworld.shapes import make_record

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from toyworld.traces import TraceDataModule

SHAPES_PREFIX = "shapes:"
_SHAPES_KEYS = ("n", "size", "seed")


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
        if len(record.question) > args.max_question_chars:
            raise BadRecord("long_question", f"{len(record.question)} characters")
        image = fit_pixels(record.image, args.min_pixels, args.max_pixels)
        return Example(image, record.question, record.answer, record.id, label)


def parse_shapes(spec: str) -> ShapesSource:
    """``shapes:<split>[?n=512&size=112&seed=0]`` -> ShapesSource; ValueError says what is wrong."""
    split, _, query = spec[len(SHAPES_PREFIX):].partition("?")
    if not split:
        raise ConfigError(f"{spec!r}: write the split, e.g. 'shapes:train?n=512'")
    try:
        params = {key: int(value) for key, value in parse_qsl(query, strict_parsing=bool(query))}
    except ValueError as error:
        raise ConfigError(f"{spec!r}: expected '?n=512&size=112&seed=0' ({error})") from error
    unknown = sorted(set(params) - set(_SHAPES_KEYS))
    if unknown:
        raise ConfigError(f"{spec!r}: unknown keys {unknown}; allowed: {list(_SHAPES_KEYS)}")
    source = ShapesSource(split, **params)
    if source.n < 1 or source.size < 8:
        raise ConfigError(f"{spec!r}: n must be >= 1 and size >= 8")
    return source


def warm_model(name: str, cache_dir: Path) -> Path:
    """The folder of ``warm:<name>``: ``tiny:<size>`` warmed up on traces (its vision tower first
    pre-trained on ``toyworld.perception`` targets when the recipe says so), built once and
    cached. Registered as the builder of ``warm:`` specs."""
    from toyworld import warmup  # here: the model stack, only when a build is needed
    from toyworld.perception import perception_loader
    from toyworld.traces import TRACE_VERSION, TraceDataModule, TraceMix

    def data(recipe: WarmRecipe) -> TraceDataModule:
        n = recipe.steps * recipe.batch_size
        return TraceDataModule(train=f"shapes:warmup?n={n}&seed={recipe.seed}", val=None,
                               batch_size=recipe.batch_size, max_pixels=recipe.max_pixels,
                               mix=TraceMix(clean=recipe.clean))

    def vision_data(recipe: WarmRecipe) -> DataLoader:
        n = recipe.vision_steps * recipe.vision_batch_size
        side = int(recipe.max_pixels ** 0.5)
        return perception_loader(ShapesSource("perception", n=n, size=side, seed=recipe.seed),
                                 recipe.vision_batch_size)

    return warmup.cached(name, cache_dir, data, data_version=TRACE_VERSION,
                         vision_data=vision_data)


def register() -> None:
    """Register ``tiny:``, ``warm:`` and ``shapes:`` (the ``srmcr.sources`` entry point)."""
    sources.register_model("tiny", tiny.cached, tuple(tiny.SPECS))
    sources.register_model("warm", warm_model, tuple(RECIPES),
                           architecture=lambda name: f"tiny:{RECIPES[name].base}")
    sources.register_data("shapes", parse_shapes)
