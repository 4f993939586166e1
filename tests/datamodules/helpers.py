"""Small files for the data tests: JSONL writing, tiny PNGs, a good row."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image


def write_jsonl(path: Path, rows: list[dict | str | bytes]) -> Path:
    """Dicts become JSON lines; strings and bytes are written verbatim (for broken lines)."""
    with path.open("wb") as f:
        for row in rows:
            text = row if isinstance(row, str | bytes) else json.dumps(row)
            f.write((text.encode() if isinstance(text, str) else text) + b"\n")
    return path


def png(path: Path, size: tuple[int, int] = (16, 16), colour=(200, 30, 30)) -> Path:
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def good_row(i: int, **extra) -> dict:
    return {"image": "good.png", "question": f"What is {i}?", "answer": str(i), **extra}


def png_bytes(size: tuple[int, int] = (16, 16), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def hf_dataset(rows: list[dict], image_column: str = "image"):
    """A ``datasets.Dataset`` of ``rows`` whose ``image_column`` holds encoded bytes (or None),
    cast to the ``datasets`` ``Image`` feature, as users build theirs."""
    from datasets import Dataset, disable_progress_bars
    from datasets import Image as ImageFeature
    disable_progress_bars()
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {name: [row.get(name) for row in rows] for name in names}
    columns[image_column] = [None if b is None else {"bytes": b, "path": None}
                             for b in columns[image_column]]
    return Dataset.from_dict(columns).cast_column(image_column, ImageFeature())


def write_table(path: Path, rows: list[dict], image_column: str = "image") -> Path:
    """``rows`` written by ``datasets``: ``to_parquet`` for a ``.parquet`` path, else
    ``save_to_disk`` into the folder ``path``."""
    dataset = hf_dataset(rows, image_column)
    if path.suffix == ".parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.save_to_disk(str(path))
    return path
