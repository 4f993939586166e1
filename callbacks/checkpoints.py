"""Periodic checkpoints of a manually optimized module: the weights after the step they name."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from srmcr.errors import require

# Lightning's advice for manual optimization, issued on every periodic save (with a code snippet).
PRE_STEP_ADVICE = "Using ModelCheckpoint with manual optimization and every_n_train_steps"


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) for ``SRMCRModule``'s manual optimization.

    With manual optimization and ``every_n_train_steps``, Lightning 2.6 saves the weights after
    the step's optimizer update and warns that the checkpoint is not the pre-update state, unless
    the module keeps a copy of its weights before every update (``saved_models``). Here the
    post-update weights are the right ones: a checkpoint of global step k holds the trainer's
    count of k updates, the optimizer's state after them, the cooling state and the RNG states
    that the step after k draws from, so resuming from it continues the run exactly; the
    pre-update weights would pair step k's optimizer state with step k - 1's weights. So the
    advice is declined, on the steps that save only; every other warning of the save still shows.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        every, top_k = kwargs.get("every_n_train_steps"), kwargs.get("save_top_k", 1)
        require({
            f"StepCheckpoint every_n_train_steps={every}: set it to 1 or more (0 or null: no "
            "periodic checkpoint)": every is None or every >= 0,
            f"StepCheckpoint save_top_k={top_k}: set it to -1 (keep all), 0 or more":
                top_k >= -1,
        })
        super().__init__(*args, **kwargs)
        self.every_n_steps = every or 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if pl_module.automatic_optimization or not self.every_n_steps \
                or trainer.global_step % self.every_n_steps:
            # Not a save of a manually optimized module. Filtering on every step would also make
            # Python forget which warnings it has shown (catch_warnings resets that on exit).
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PRE_STEP_ADVICE, category=UserWarning)
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
