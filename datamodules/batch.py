"""The batch type of ``ImageQuestionDataModule`` and the collate function that builds it.

One DataLoader worker builds a whole batch, so a batch also carries that worker's bookkeeping
(``BatchProgress``): the main process learns skip counts and stream positions only this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image

from datamodules.stream import Tagged

Stage = Literal["train", "val", "test", "predict"]


@dataclass(frozen=True)
class BatchProgress:
    """Bookkeeping from the worker that made the batch (one worker makes a whole batch)."""

    stage: Stage
    shard: int
    pass_index: int
    position: int  # raw records of the shard's pass consumed up to this batch's last record
    read: int  # records decoded since the worker's previous batch, good and bad
    skipped: dict[str, int]  # per reason, since the worker's previous batch


@dataclass(frozen=True)
class ImageQuestionBatch:
    images: list[Image.Image]  # (B,) RGB, area within [min_pixels, max_pixels]; stay on CPU
    questions: list[str]  # (B,)
    answers: list[str | None]  # (B,) only for validation metrics, never for training
    ids: list[str]  # (B,) the record's id, else its source
    sources: list[str]  # (B,) "path/data.jsonl:17" or "shapes:train:17"
    progress: BatchProgress

    def __len__(self) -> int:
        return len(self.questions)


def collate(items: list[Tagged], stage: Stage) -> ImageQuestionBatch:
    skipped: dict[str, int] = {}
    for item in items:
        for reason, n in item.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    last, examples = items[-1], [item.example for item in items]
    progress = BatchProgress(stage, last.shard, last.pass_index, last.position,
                             sum(item.read for item in items), skipped)
    return ImageQuestionBatch([e.image for e in examples], [e.question for e in examples],
                              [e.answer for e in examples], [e.id for e in examples],
                              [e.source for e in examples], progress)
