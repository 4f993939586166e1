"""Small files for the data tests: JSONL writing, tiny PNGs, a good row."""

from __future__ import annotations

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
