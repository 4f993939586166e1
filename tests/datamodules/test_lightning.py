"""The DataModule under a real Trainer: batches stay PIL, counters fold in, checkpoints resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from PIL import Image

from datamodules.image_question import ImageQuestionBatch, ImageQuestionDataModule
from tests.datamodules.helpers import good_row, write_jsonl


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch: ImageQuestionBatch, batch_idx: int) -> torch.Tensor:
        assert all(isinstance(image, Image.Image) for image in batch.images)
        self.seen.append(batch.sources)
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch: ImageQuestionBatch, batch_idx: int) -> None:
        assert batch.answers[0] is not None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(path: Path, root: Path, steps: int, ckpt: Path | None = None):
    dm = ImageQuestionDataModule(train=str(path), val="shapes:val?n=3", batch_size=2,
                                 shuffle_buffer=4, min_pixels=1)
    module = Recorder()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=root, val_check_interval=2, num_sanity_val_steps=0)
    trainer.fit(module, dm, ckpt_path=ckpt)
    return trainer, dm, module


def test_fit_counts_skips_and_resumes_from_a_checkpoint(images: Path):
    path = write_jsonl(images / "d.jsonl", [good_row(i) if i != 3 else "{x" for i in range(9)])
    _, full_dm, full = _fit(path, images, steps=7)
    trainer, _, first = _fit(path, images, steps=3)
    trainer.save_checkpoint(images / "step3.ckpt")
    _, resumed_dm, resumed = _fit(path, images, steps=7, ckpt=images / "step3.ckpt")
    assert first.seen + resumed.seen == full.seen  # no record replayed, none lost
    # The counters come from the batches the model consumed, saved and restored with the data.
    assert full_dm.skipped == resumed_dm.skipped and full_dm.skipped["bad_json"] >= 1
    assert full_dm.read == resumed_dm.read >= 14 + 1 + 3 * 3  # train, and val at steps 2, 4, 6
