"""ImageQuestionDataModule: arguments, batches, sharding, infinite train stream, resume."""

from __future__ import annotations

from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
from PIL import Image

from datamodules.image_question import ImageQuestionBatch, ImageQuestionDataModule
from datamodules.records import ColumnArgs
from tests.datamodules.helpers import good_row, write_jsonl


def take(dm: ImageQuestionDataModule, stage: str, n: int | None = None) -> list[ImageQuestionBatch]:
    """Consume ``n`` batches (all, for a finite stage) the way Lightning would."""
    iterator = iter(getattr(dm, f"{stage}_dataloader")())
    try:
        batches = list(islice(iterator, n))
    except ValueError as error:
        # Drop the DataLoader frames that hold the iterator, so its workers shut down here; a
        # traceback cycle would leave that to the garbage collector in some later test, after
        # finalizing the queues, and each worker join then waits out a 5 s timeout.
        error.__traceback__ = None
        del iterator
        raise
    for batch in batches:
        dm.on_after_batch_transfer(batch, 0)
    return batches


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size=0"),
    ({"num_workers": -1}, "num_workers=-1"),
    ({"shuffle_buffer": -2}, "shuffle_buffer"),
    ({"min_pixels": 0}, "min_pixels=0"),
    ({"min_pixels": 1000, "max_pixels": 999}, "raise max_pixels"),
    ({"min_pixels": 100, "max_pixels": 500}, r"max_pixels=500: set it to 784 \(28x28"),
    ({"columns": ColumnArgs(question="")}, "data.columns.question='': set it to a field name"),
    ({"max_question_chars": 0}, "max_question_chars"),
    ({"max_bad_fraction": 1.5}, r"within \[0, 1\]"),
    ({"max_bad_fraction": -0.1}, r"within \[0, 1\]"),
    ({"train": ""}, "empty source"),
    ({"train": "shapes:train?m=3"}, "unknown keys"),
])
def test_impossible_arguments_fail_at_init(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageQuestionDataModule(**kwargs)


def test_missing_sources_fail_at_setup_naming_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"data\.val: .*gone\.jsonl"):
        ImageQuestionDataModule(train="shapes:train", val=str(tmp_path / "gone.jsonl")).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"data\.test: no file matches .*\*\.jsonl"):
        ImageQuestionDataModule(test=str(tmp_path / "*.jsonl")).setup("test")
    with pytest.raises(ValueError, match="needs data.train"):
        ImageQuestionDataModule(val="shapes:val").setup("fit")
    with pytest.raises(ValueError, match=r"rank=2 must lie in \[0, world_size=2\)"):
        ImageQuestionDataModule(train="shapes:train").setup("fit", rank=2, world_size=2)


def test_batches_are_typed_and_ids_default_to_source_line(images: Path):
    path = write_jsonl(images / "d.jsonl", [good_row(0, id="a"), good_row(1), good_row(2)])
    dm = ImageQuestionDataModule(val=str(path), batch_size=2, min_pixels=1)
    dm.setup("validate")
    first, second = take(dm, "val")
    assert isinstance(first, ImageQuestionBatch) and len(first) == 2 and len(second) == 1
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" for im in first.images)
    assert first.questions == ["What is 0?", "What is 1?"] and first.answers == ["0", "1"]
    assert first.ids == ["a", f"{path}:2"] and second.sources == [f"{path}:3"]
    assert dm.transfer_batch_to_device(first, "cpu", 0) is first  # PIL stays put


def test_shapes_source_equals_the_written_files(tmp_path: Path):
    from toyworld.shapes import write_dataset
    path = write_dataset(tmp_path, n=6, seed=5, split="val")
    files = take(ImageQuestionDataModule(val=str(path), batch_size=6), "val")[0]
    memory = take(ImageQuestionDataModule(val="shapes:val?n=6&seed=5", batch_size=6), "val")[0]
    assert (files.questions, files.answers, files.ids) == (memory.questions, memory.answers,
                                                          memory.ids)
    assert [im.tobytes() for im in files.images] == [im.tobytes() for im in memory.images]
    assert memory.sources[:2] == ["shapes:val:0", "shapes:val:1"]


def _sharded(stage: str, spec: list[str], batches: int | None) -> list[list[ImageQuestionBatch]]:
    runs = []
    for rank in range(2):
        dm = ImageQuestionDataModule(train=spec, val=spec, batch_size=1, num_workers=2,
                                     shuffle_buffer=4, min_pixels=1)
        dm.setup("fit", rank=rank, world_size=2)
        runs.append(take(dm, stage, batches))
    return runs


def test_two_ranks_times_two_workers_read_every_record_exactly_once(images: Path):
    files = [write_jsonl(images / f"{part}.jsonl", [good_row(i) for i in range(n)])
             for part, n in (("b", 20), ("a", 17))]
    expected = {f"{f}:{line}" for f, n in zip(files, (20, 17)) for line in range(1, n + 1)}
    spec = [str(images / "*.jsonl")]
    val = [s for run in _sharded("val", spec, None) for b in run for s in b.sources]
    assert Counter(val) == Counter(expected)  # finite pass: once each, nothing more
    # Train: every shard holds 9 or 10 records per pass and yields 20 in 40 batches per rank,
    # so each has finished pass 0; the pass-0 records are again exactly the data set.
    train = [b for run in _sharded("train", spec, 40) for b in run]
    first_pass = [b.sources[0] for b in train if b.progress.pass_index == 0]
    assert Counter(first_pass) == Counter(expected)
    assert {b.progress.shard for b in train} == {0, 1, 2, 3}
    assert any(b.progress.pass_index >= 1 for b in train)  # infinite: it cycles


def test_train_stream_cycles_with_a_new_order_each_pass():
    dm = ImageQuestionDataModule(train="shapes:train?n=10", batch_size=5, shuffle_buffer=8)
    order = [s for b in take(dm, "train", 6) for s in b.sources]
    passes = [order[i:i + 10] for i in range(0, 30, 10)]
    assert all(sorted(p) == sorted(passes[0]) for p in passes)
    assert len({tuple(p) for p in passes}) == 3  # reshuffled each pass
    again = ImageQuestionDataModule(train="shapes:train?n=10", batch_size=5, shuffle_buffer=8)
    assert [s for b in take(again, "train", 6) for s in b.sources] == order  # seeded


def _resume_case(path: str, num_workers: int, k: int, m: int) -> None:
    def fresh() -> ImageQuestionDataModule:
        return ImageQuestionDataModule(train=path, batch_size=3, num_workers=num_workers,
                                       shuffle_buffer=8, seed=1, min_pixels=1)

    full_dm = fresh()
    full = take(full_dm, "train", k + m)
    first = fresh()
    take(first, "train", k)
    resumed = fresh()
    resumed.load_state_dict(first.state_dict())
    rest = take(resumed, "train", m)
    assert [b.sources for b in rest] == [b.sources for b in full[k:]]
    assert [b.questions for b in rest] == [b.questions for b in full[k:]]
    assert resumed.skipped == full_dm.skipped and resumed.read == full_dm.read


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_with_the_next_unseen_record(images: Path, num_workers: int):
    # 29 records, 3 of them bad: positions must count raw records, counters must not double.
    rows = [good_row(i) if i % 10 != 4 else "{broken" for i in range(29)]
    path = str(write_jsonl(images / "d.jsonl", rows))
    _resume_case(path, num_workers, k=5, m=9)  # k odd: worker 1 is next under round-robin


def test_resume_fast_forwards_without_decoding_images(images: Path, monkeypatch):
    path = str(write_jsonl(images / "d.jsonl", [good_row(i) for i in range(40)]))
    first = ImageQuestionDataModule(train=path, batch_size=4, min_pixels=1)
    take(first, "train", 8)
    resumed = ImageQuestionDataModule(train=path, batch_size=4, min_pixels=1)
    resumed.load_state_dict(first.state_dict())
    import datamodules.records as records
    opened = []
    real = records.load_image
    monkeypatch.setattr(records, "load_image", lambda *a: opened.append(1) or real(*a))
    take(resumed, "train", 1)
    assert len(opened) == 4  # the 32 consumed records were skipped unopened


def test_changed_shard_count_restarts_at_a_new_pass():
    first = ImageQuestionDataModule(train="shapes:train?n=10", batch_size=4)
    take(first, "train", 2)
    resumed = ImageQuestionDataModule(train="shapes:train?n=10", batch_size=4, num_workers=2)
    resumed.load_state_dict(first.state_dict())
    with pytest.warns(UserWarning, match="saved with 1 shards"):
        batch = take(resumed, "train", 1)[0]
    assert batch.progress.pass_index == 1
    assert resumed.state_dict()["shards"] == 2


def test_cli_schema_documents_every_argument():
    from jsonargparse import ArgumentParser, set_parsing_settings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # as main.py does
    parser = ArgumentParser()
    parser.add_class_arguments(ImageQuestionDataModule, "data")
    text = parser.format_help()
    for phrase in ("Prompts per step", "shapes:<split>", "max_bad_fraction", "min_pixels"):
        assert phrase in text
    cfg = parser.parse_args(["--data.train=shapes:train?n=8", "--data.val=[a.jsonl, b*.jsonl]",
                             "--data.columns.question=prompt"])
    assert cfg.data.train == "shapes:train?n=8" and cfg.data.val == ["a.jsonl", "b*.jsonl"]
    assert cfg.data.columns.question == "prompt" and cfg.data.columns.image == "image"
    assert "Parquet file" in text and "The question text" in text

