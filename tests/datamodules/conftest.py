from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from tests.datamodules.helpers import png


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder with good.png, truncated.png, text.png and a folder named dir.png."""
    png(tmp_path / "good.png")
    noise = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    noise.save(tmp_path / "noise.png", format="PNG")
    # Cut inside the pixel data: the header opens, load() fails.
    data = (tmp_path / "noise.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "dir.png").mkdir()
    return tmp_path
