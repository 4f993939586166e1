"""The tally world: deterministic records, exact answers, random-order traces, the trace checker,
per-token perception targets and the ``tally:`` source."""

from __future__ import annotations

import random

import pytest

from datamodules.records import DecodeArgs, resolve
from srmcr.parsing import parse
from toyworld import tally
from toyworld.sources import TallySource, parse_tally


def test_a_record_is_a_pure_function_of_its_arguments():
    a, b = tally.make_record(0, "dev", 7, "frontier"), tally.make_record(0, "dev", 7, "frontier")
    assert (a.question, a.answer, a.cells) == (b.question, b.answer, b.cells)
    assert a.image.tobytes() == b.image.tobytes()
    other = tally.make_record(0, "dev", 8, "frontier")
    assert other.image.tobytes() != a.image.tobytes()


@pytest.mark.parametrize("level", tally.LEVELS)
def test_scenes_keep_their_levels_bounds_and_answers_add_the_sides(level):
    lo, hi = tally.SHAPES[level]
    t_hi = tally.TARGETS[level][1]
    for index in range(200):
        r = tally.make_record(0, "dev", index, level)
        assert lo <= len(r.scene.shapes) <= hi
        assert len(r.targets()) <= t_hi
        assert len(set(r.cells)) == len(r.cells)  # one shape per cell
        assert r.answer == str(sum(tally.SIDES[s.kind] for _, s in r.targets()))
        assert r.question == f"How many sides do the {r.colour} shapes have in total?"


def test_frontier_asks_about_more_shapes_than_the_warm_up_sees():
    base = [len(tally.make_record(0, "dev", i, "base").targets()) for i in range(300)]
    frontier = [len(tally.make_record(0, "dev", i, "frontier").targets()) for i in range(300)]
    assert sum(frontier) / 300 > sum(base) / 300 + 1


def test_a_trace_lists_every_target_once_with_a_running_total_in_a_random_order():
    record = next(r for i in range(50) if len((r := tally.make_record(0, "dev", i)).targets()) >= 4)
    orders = set()
    for seed in range(20):
        parsed = parse(tally.write_trace(record, random.Random(seed)))
        assert parsed.well_formed and parsed.answer == record.answer
        assert len(parsed.steps) == len(record.targets())
        assert tally.check_trace(record, parsed.steps, parsed.answer) == dict.fromkeys(
            ("wrong_cell", "repeat", "misread", "sides", "sum", "garbled", "missed", "answer"), 0)
        orders.add(tuple(step.split()[0] for step in parsed.steps))
    assert len(orders) > 5  # many paths to one answer


def test_no_shape_of_the_colour_is_one_step_and_answer_zero():
    record = next(r for i in range(200)
                  if not (r := tally.make_record(0, "dev", i, "base")).targets())
    parsed = parse(tally.write_trace(record, random.Random(0)))
    assert list(parsed.steps) == [f"no {record.colour} shapes"] and parsed.answer == "0"
    assert sum(tally.check_trace(record, parsed.steps, parsed.answer).values()) == 0


def test_check_trace_counts_each_kind_of_slip():
    record = next(r for i in range(100) if len((r := tally.make_record(0, "dev", i)).targets()) >= 3)
    (c1, s1), (c2, s2) = record.targets()[:2]
    other = next(c for c in record.cells if c not in {c for c, _ in record.targets()})
    wrong_kind = next(k for k in tally.SIDES if k != s2.kind)
    v1, v2 = tally.SIDES[s1.kind], tally.SIDES[wrong_kind]
    steps = [f"{c1} {s1.kind} {v1}, total {v1}",  # right
             f"{c1} {s1.kind} {v1}, total {2 * v1}",  # the same cell again
             f"{c2} {wrong_kind} {v2}, total {2 * v1 + v2 + 1}",  # misread, and a wrong sum
             f"{other} square 4, total {2 * v1 + v2 + 5}",  # a shape of another colour
             "I am lost"]
    got = tally.check_trace(record, steps, str(2 * v1 + v2 + 5))
    assert got == {"wrong_cell": 1, "repeat": 1, "misread": 1, "sides": 0, "sum": 1,
                   "garbled": 1, "missed": len(record.targets()) - 2, "answer": 0}
    assert tally.check_trace(record, steps, "99")["answer"] == 1
    assert tally.check_trace(record, steps, None)["answer"] == 1


def test_token_targets_name_each_cell_and_what_it_shows():
    record = tally.make_record(0, "dev", 3, "frontier")
    targets = tally.token_targets(record)
    words = tally.TOKEN_WORDS
    assert targets.shape == (16, len(words))
    cols, rows = targets[:, :4], targets[:, 4:8]
    assert (cols.sum(1) == 1).all() and (rows.sum(1) == 1).all()
    for cell, shape in zip(record.cells, record.scene.shapes):
        token = tally.ROWS.index(cell[1]) * 4 + tally.COLUMNS.index(cell[0])
        assert targets[token, words.index(shape.colour)] == 1
        assert targets[token, words.index(shape.kind)] == 1
        assert targets[token, words.index(cell[0])] == 1
        assert targets[token, words.index(cell[1])] == 1
    assert targets[:, 8:].sum() == 2 * len(record.cells)  # empty cells show nothing


def test_each_cell_has_its_own_tint():
    tints = {tally.background(r, c) for r in range(4) for c in range(4)}
    assert len(tints) == 16
    image = tally.render(tally.Scene(()), 112)
    assert image.getpixel((2, 2)) == tally.background(0, 0)
    assert image.getpixel((109, 109)) == tally.background(3, 3)


def test_tally_specs_resolve_through_the_registry():
    source = resolve("tally:dev?n=3&level=base")[0]
    assert source == TallySource("dev", n=3, level="base")
    examples = [source.decode(label, raw, DecodeArgs(784, 112 * 112, 200))
                for label, raw in source.raws()]
    record = tally.make_record(0, "dev", 2, "base")
    assert (examples[2].question, examples[2].answer) == (record.question, record.answer)
    assert examples[2].source == "tally:dev:base:2"


@pytest.mark.parametrize("spec, match", [
    ("tally:", "write the split"),
    ("tally:dev?level=hard", "level one of"),
    ("tally:dev?n=0", "n must be"),
    ("tally:dev?count=3", "unknown keys"),
])
def test_bad_tally_specs_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_tally(spec)
