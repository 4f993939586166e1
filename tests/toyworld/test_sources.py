"""The toy world's registered sources: shapes: specs, and tiny:/warm: names without main.py."""

from __future__ import annotations

import pytest

from datamodules.records import DecodeArgs, resolve
from srmcr import sources
from toyworld.shapes import make_record
from toyworld.sources import ShapesSource, parse_shapes


def test_shapes_source_matches_make_record():
    source = parse_shapes("shapes:val?n=5&size=64&seed=2")
    assert source == ShapesSource("val", n=5, size=64, seed=2)
    labels = [label for label, _ in source.raws()]
    assert labels == [f"shapes:val:{i}" for i in range(5)]
    example = source.decode("shapes:val:3", 3, DecodeArgs(1, 10**6, 100))
    record = make_record(2, "val", 3, size=64)
    assert (example.question, example.answer, example.id) == (record.question, record.answer,
                                                              record.id)
    assert example.image.tobytes() == record.image.tobytes()
    assert parse_shapes("shapes:train") == ShapesSource("train", n=512, size=112, seed=0)


@pytest.mark.parametrize("spec, match", [
    ("shapes:", "write the split"),
    ("shapes:train?n=ten", "expected"),
    ("shapes:train?count=3", "unknown keys"),
    ("shapes:train?n=0", "n must be"),
    ("shapes:train?n", "expected"),
])
def test_bad_shapes_strings_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_shapes(spec)


def test_shapes_specs_resolve_through_the_registry_without_main():
    assert resolve("shapes:val?n=3") == [ShapesSource("val", n=3)]
    assert {"tiny", "warm"} <= set(sources.model_kinds())
    assert "shapes" in sources.data_kinds()
    assert sources.model_source("warm").architecture("small") == "tiny:small"
