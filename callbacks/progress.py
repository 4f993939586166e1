"""A progress bar that counts steps towards ``max_steps`` on the endless training stream."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, with ``max_steps`` as the total when the train stream is endless.

    The training stream repeats forever (docs/design.md, "Data"), so Lightning sees one infinite
    epoch and would show no total and an "Epoch 0/-2" label. A tqdm bar also shows its progress
    where output is not a terminal (a pipe, a log file), unlike Lightning's rich bar.

    Args:
        description: The bar's label while it counts steps.
    """

    def __init__(self, description: str = "Training") -> None:
        super().__init__()
        self.description = description

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        if total == float("inf") and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return total

    def on_train_epoch_start(self, trainer: L.Trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        if self.total_train_batches == trainer.max_steps:
            self.train_progress_bar.set_description(self.description)
            self.train_progress_bar.n = trainer.global_step  # a resumed run starts part-way
            self.train_progress_bar.refresh()
