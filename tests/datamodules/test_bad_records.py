"""Bad records: skipped with a counted reason, warned with file:line, fatal past a threshold."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import pytest

from datamodules.image_question import ImageQuestionDataModule
from datamodules.records import REASONS
from tests.datamodules.helpers import good_row, write_jsonl
from tests.datamodules.test_image_question import take

CASES = [  # (line written verbatim or as JSON, reason, why)
    ("{not json", "bad_json", "invalid JSON"),
    ("[1, 2]", "bad_json", "valid JSON but not an object"),
    ('"just a string"', "bad_json", "a JSON string"),
    (b'{"image": "good.png", "question": "\xff"}', "bad_json", "not UTF-8"),
    ({"question": "q"}, "missing_field", "no image"),
    ({"image": "", "question": "q"}, "missing_field", "empty image"),
    ({"image": "good.png"}, "missing_field", "no question"),
    ({"image": "good.png", "question": "   "}, "missing_field", "blank question"),
    ({"image": "good.png", "question": 7}, "missing_field", "question not a string"),
    ({"image": ["good.png"], "question": "q"}, "missing_field", "image not a string"),
    ({"image": "absent.png", "question": "q"}, "missing_image", "no such file"),
    ({"image": "dir.png", "question": "q"}, "missing_image", "a folder, not a file"),
    ({"image": "truncated.png", "question": "q"}, "bad_image", "truncated PNG"),
    ({"image": "text.png", "question": "q"}, "bad_image", "text named .png"),
    ({"image": "good.png", "question": "x" * 101}, "long_question", "over max_question_chars"),
]


def _module(path: Path, **kwargs) -> ImageQuestionDataModule:
    return ImageQuestionDataModule(val=str(path), train=str(path), min_pixels=1,
                                   max_question_chars=100, **kwargs)


@pytest.mark.parametrize("line, reason, why", CASES, ids=[c[2] for c in CASES])
def test_each_bad_record_is_skipped_and_counted(images: Path, caplog, line, reason, why):
    path = write_jsonl(images / "d.jsonl", [good_row(0), line])
    dm = _module(path, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="datamodules.stream"):
        (batch,) = take(dm, "val")
    assert len(batch) == 1  # the good record still comes through
    assert dm.skipped == {r: int(r == reason) for r in REASONS} and dm.read == 2
    assert f"{path}:2" in caplog.text and reason in caplog.text


def test_counts_reach_the_main_process_from_workers(images: Path):
    rows = [row for i, case in enumerate(CASES) for row in (good_row(i), good_row(i), case[0])]
    rows += [good_row(99)]  # 31 good, 15 bad: one of each case
    path = write_jsonl(images / "d.jsonl", rows)
    dm = _module(path, batch_size=3, num_workers=2, max_bad_fraction=1.0)
    batches = take(dm, "val")
    assert sum(len(b) for b in batches) == 31 and dm.read == 46
    assert dm.skipped == {r: sum(case[1] == r for case in CASES) for r in REASONS}


def test_trailing_bad_records_of_a_finite_pass_are_counted(images: Path):
    path = write_jsonl(images / "d.jsonl", [good_row(0), "{x", {"question": "q"}])
    dm = _module(path)
    take(dm, "val")
    assert dm.skipped["bad_json"] == 1 and dm.skipped["missing_field"] == 1 and dm.read == 3


def test_warnings_are_rate_limited(images: Path, caplog):
    path = write_jsonl(images / "d.jsonl", [good_row(0)] + ["{x"] * 150)
    with caplog.at_level(logging.WARNING, logger="datamodules.stream"):
        take(_module(path, max_bad_fraction=1.0), "val")
    assert len(caplog.records) == 11  # the first 10, then the 100th


def test_too_many_bad_records_stop_with_the_file_and_first_bad_lines(images: Path):
    rows = [good_row(i) if i % 5 else "{x" for i in range(150)]  # 20% bad
    path = write_jsonl(images / "d.jsonl", rows)
    with pytest.raises(ValueError, match="max_bad_fraction=0.1") as error:
        take(_module(path, batch_size=2), "val")
    message = str(error.value)
    assert f"from {path} are bad" in message
    assert f"{path}:1: bad_json; {path}:6: bad_json; {path}:11: bad_json" in message
    with pytest.raises(ValueError, match=rf"of 10\d records read .* First bad lines: {path}:"):
        take(_module(path, batch_size=2, num_workers=2), "train", 100)
    batches = take(_module(path, max_bad_fraction=0.25), "val")  # under the cap: fine
    assert sum(len(b) for b in batches) == 120


@pytest.mark.parametrize("stage, num_workers", [("val", 0), ("train", 0), ("train", 2)])
def test_a_pass_without_good_records_is_an_error(images: Path, stage: str, num_workers: int):
    path = write_jsonl(images / "d.jsonl", ["{x", {"image": "absent.png", "question": "q"}] * 2)
    dm = _module(path, num_workers=num_workers)
    with pytest.raises(ValueError, match=rf"no good record in a full pass over {path}: all \d read"
                                         rf" are bad\. First bad lines: {path}:\d: "):
        take(dm, stage, 1)


def test_an_empty_train_shard_is_an_error_not_a_hang(images: Path):
    path = write_jsonl(images / "d.jsonl", [good_row(0)])
    with pytest.raises(ValueError, match="fewer records than shards; lower num_workers"):
        take(_module(path, num_workers=2), "train", 2)


def test_streaming_a_large_file_keeps_memory_bounded(images: Path):
    line = '{"image": "good.png", "question": "What colour is the square?", "answer": "red"}\n'
    path = images / "big.jsonl"
    path.write_text(line * 100_000)  # 8 MB
    dm = _module(path, batch_size=4, shuffle_buffer=64)
    tracemalloc.start()
    try:
        batches = take(dm, "train", 75)  # 300 records
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(len(b) for b in batches) == 300
    assert peak < 3 * 2**20, f"peak {peak / 2**20:.1f} MB"
