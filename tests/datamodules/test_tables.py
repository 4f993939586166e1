"""Parquet files and save_to_disk folders, written by ``datasets`` itself: streamed, sharded,
resumed, checked for their columns, their bad records counted like JSONL's."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from datamodules.image_question import ImageQuestionDataModule
from datamodules.records import REASONS, ColumnArgs, resolve
from datamodules.tables import ArrowDatasetSource, ParquetSource
from tests.datamodules.helpers import png_bytes, write_jsonl, write_table
from tests.datamodules.test_image_question import _resume_case, take

FORMATS = ["d.parquet", "saved"]  # a Parquet file, a save_to_disk folder


def _rows(n: int, **extra) -> list[dict]:
    return [{"image": png_bytes(colour=(i, 2 * i, 3)), "question": f"What is {i}?",
             "answer": str(i), "id": f"r{i}", **extra} for i in range(n)]


@pytest.mark.parametrize("name", FORMATS)
def test_records_come_through_with_their_fields_and_row_labels(tmp_path: Path, name: str):
    path = write_table(tmp_path / name, _rows(5))
    dm = ImageQuestionDataModule(val=str(path), batch_size=5, min_pixels=1)
    dm.setup("validate")
    (batch,) = take(dm, "val")
    assert batch.questions == [f"What is {i}?" for i in range(5)]
    assert batch.answers == [str(i) for i in range(5)] and batch.ids == [f"r{i}" for i in range(5)]
    assert batch.sources == [f"{path}:{row}" for row in range(5)]  # 0-based, as Dataset[row]
    assert [im.getpixel((0, 0)) for im in batch.images] == [(i, 2 * i, 3) for i in range(5)]
    assert dm.read == 5 and not any(dm.skipped.values())


def test_parquet_and_saved_dataset_and_jsonl_give_the_same_examples(tmp_path: Path):
    rows = _rows(4)
    for i, row in enumerate(rows):
        (tmp_path / f"{i}.png").write_bytes(row["image"])
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{**row, "image": f"{i}.png"}
                                              for i, row in enumerate(rows)])
    got = []
    tables = [write_table(tmp_path / "d.parquet", rows), write_table(tmp_path / "s", rows)]
    for path in (jsonl, *tables):
        (batch,) = take(ImageQuestionDataModule(val=str(path), batch_size=4, min_pixels=1), "val")
        got.append((batch.questions, batch.answers, batch.ids,
                    [im.tobytes() for im in batch.images]))
    assert got[0] == got[1] == got[2]


def test_image_paths_in_a_parquet_file_are_relative_to_it(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes(colour=(9, 9, 9)))
    from datasets import Dataset
    Dataset.from_dict({"image": ["imgs/a.png"], "question": ["q?"]}).to_parquet(
        str(tmp_path / "d.parquet"))  # a plain string column
    (batch,) = take(ImageQuestionDataModule(val=str(tmp_path / "d.parquet"), min_pixels=1), "val")
    assert batch.images[0].getpixel((0, 0)) == (9, 9, 9) and batch.answers == [None]


@pytest.mark.parametrize("name", FORMATS)
def test_bad_records_are_skipped_and_counted_with_their_row(tmp_path: Path, name: str, caplog):
    rows = _rows(3) + [{"image": b"not an image", "question": "q"},
                       {"image": None, "question": "q"},
                       {"image": png_bytes(), "question": " "},
                       {"image": png_bytes(size=(4000, 10)), "question": "q"}]
    path = write_table(tmp_path / name, rows)
    dm = ImageQuestionDataModule(val=str(path), batch_size=8, min_pixels=1)
    dm.setup("validate")
    (batch,) = take(dm, "val")
    assert len(batch) == 3 and dm.read == 7
    assert dm.skipped == {r: {"bad_image": 1, "missing_field": 2, "bad_aspect": 1}.get(r, 0)
                          for r in REASONS}
    assert f"{path}:3: bad_image" in caplog.text and f"{path}:6: bad_aspect" in caplog.text


@pytest.mark.parametrize("name", FORMATS)
def test_a_missing_column_fails_at_setup_naming_file_column_and_columns(tmp_path: Path, name):
    path = write_table(tmp_path / name, [{"image": png_bytes(), "prompt": "q", "label": "1"}])
    dm = ImageQuestionDataModule(train=str(path))
    with pytest.raises(ValueError) as error:
        dm.setup("fit")
    assert str(error.value) == (
        f"data.train: {path} has no column 'question' (data.columns.question); its columns: "
        "image, prompt, label. Set data.columns.question to the one that holds the question")
    mapped = ImageQuestionDataModule(train=str(path), columns=ColumnArgs(question="prompt"))
    mapped.setup("fit")  # mapped: fine


@pytest.mark.parametrize("name", ["d.parquet", "saved", "d.jsonl"])
def test_column_names_map_from_the_config(tmp_path: Path, name: str):
    rows = [{"picture": png_bytes(), "prompt": f"Q{i}?", "label": label, "key": f"k{i}",
             "options": ["x", "y"]} for i, label in enumerate(["x", "B"])]
    if name == "d.jsonl":
        (tmp_path / "a.png").write_bytes(png_bytes())
        path = write_jsonl(tmp_path / name, [{**r, "picture": "a.png"} for r in rows])
    else:
        path = write_table(tmp_path / name, rows, image_column="picture")
    columns = ColumnArgs(image="picture", question="prompt", answer="label", id="key",
                         choices="options")
    (batch,) = take(ImageQuestionDataModule(val=str(path), batch_size=2, min_pixels=1,
                                            columns=columns), "val")
    assert batch.ids == ["k0", "k1"] and batch.answers == ["A", "B"]
    assert batch.answers[1].options == ("x", "y")
    assert batch.questions[1] == "Q1?\nA. x\nB. y\nAnswer with the option's letter."


def test_only_the_mapped_columns_are_read_from_parquet(tmp_path: Path):
    path = write_table(tmp_path / "d.parquet", [{**_rows(1)[0], "extra": "big"}])
    (source,) = resolve(str(path), ColumnArgs(id="extra"))
    assert isinstance(source, ParquetSource)
    assert source.columns == ("image", "question", "answer", "extra")


def test_globs_datasetdicts_and_plain_folders(tmp_path: Path):
    for part in ("b", "a"):
        write_table(tmp_path / f"{part}.parquet", _rows(2))
    assert [s.path.name for s in resolve(str(tmp_path / "*.parquet"))] == ["a.parquet", "b.parquet"]
    from datasets import DatasetDict

    from tests.datamodules.helpers import hf_dataset
    DatasetDict({"train": hf_dataset(_rows(2)), "test": hf_dataset(_rows(1))}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(FileNotFoundError, match=r"holds a DatasetDict: give one split's folder, "
                                                r"e\.g\. .*dd/train \(splits: train, test\)"):
        resolve(str(tmp_path / "dd"))
    assert isinstance(resolve(str(tmp_path / "dd" / "test"))[0], ArrowDatasetSource)
    assert [str(s) for s in resolve(str(tmp_path / "dd" / "t*"))] == [
        str(tmp_path / "dd" / "test"), str(tmp_path / "dd" / "train")]
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="without state.json"):
        resolve(str(tmp_path / "plain"))
    (tmp_path / "fake.parquet").write_text("{}")
    with pytest.raises(ValueError, match="fake.parquet is not a readable Parquet file"):
        resolve(str(tmp_path / "fake.parquet"))


def test_a_saved_dataset_of_several_arrow_files_reads_in_order(tmp_path: Path):
    from tests.datamodules.helpers import hf_dataset
    hf_dataset(_rows(7)).save_to_disk(str(tmp_path / "s"), num_shards=3)
    state = json.loads((tmp_path / "s" / "state.json").read_text())
    assert len(state["_data_files"]) == 3
    (batch,) = take(ImageQuestionDataModule(val=str(tmp_path / "s"), batch_size=8, min_pixels=1),
                    "val")
    assert batch.ids == [f"r{i}" for i in range(7)]
    assert batch.sources[-1] == f"{tmp_path / 's'}:6"


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_with_the_next_unseen_record(tmp_path: Path, name: str, num_workers):
    rows = [r if i % 10 != 4 else {**r, "image": b"broken"} for i, r in enumerate(_rows(29))]
    _resume_case(str(write_table(tmp_path / name, rows)), num_workers, k=5, m=9)


@pytest.mark.parametrize("name", FORMATS)
def test_resume_fast_forwards_without_decoding_images(tmp_path: Path, name, monkeypatch):
    path = str(write_table(tmp_path / name, _rows(40)))
    first = ImageQuestionDataModule(train=path, batch_size=4, min_pixels=1)
    take(first, "train", 8)
    resumed = ImageQuestionDataModule(train=path, batch_size=4, min_pixels=1)
    resumed.load_state_dict(first.state_dict())
    import datamodules.images as images
    decoded = []
    real = images.decode
    monkeypatch.setattr(images, "decode", lambda *a: decoded.append(1) or real(*a))
    take(resumed, "train", 1)
    assert len(decoded) == 4  # the 32 consumed records were skipped undecoded


@pytest.mark.parametrize("name", FORMATS)
def test_two_ranks_times_two_workers_read_every_row_exactly_once(tmp_path: Path, name: str):
    path = write_table(tmp_path / name, _rows(37))
    seen = []
    for rank in range(2):
        dm = ImageQuestionDataModule(val=str(path), batch_size=3, num_workers=2, min_pixels=1)
        dm.setup("validate", rank=rank, world_size=2)
        seen += [s for b in take(dm, "val") for s in b.sources]
    assert Counter(seen) == Counter(f"{path}:{row}" for row in range(37))


def test_parquet_streams_pages_not_whole_row_groups(tmp_path: Path):
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    rng = random.Random(0)
    noise = [Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3)) for _ in range(600)]
    rows = [{"image": _png(im), "question": "q"} for im in noise]  # ~7 MB of incompressible bytes
    path = write_table(tmp_path / "d.parquet", rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1  # datasets: up to ~100 MB a group
    (source,) = resolve(str(path))
    before = pa.total_allocated_bytes()
    held = max(pa.total_allocated_bytes() for _ in source.raws()) - before
    assert held < 3 * 2**20, f"{held / 2**20:.1f} MB held by pyarrow while streaming"


def _png(image) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_the_streaming_benchmark_reads_every_row(tmp_path: Path):
    from benchmarks.data_stream import stream
    from benchmarks.data_stream import write_table as write_bench
    result = stream(write_bench(tmp_path / "b.parquet", rows=40, side=16), first=20)
    assert result["records"] == result["read"] == 40
