"""Validate once before the first training step, so every val/* curve starts at the start model."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class ValidateAtStart(L.Callback):
    """Runs the validation loop in ``on_train_start`` of a fresh run (global step 0).

    Label-free training can make the model worse; this first point is the number it has to beat.
    LoRA starts at zero, so step 0 is the base model itself. The metrics are logged at step 0, and
    ``ModelCheckpoint``/``EarlyStopping`` see them like any validation's (``BestCheckpoint`` keeps
    this model when nothing later beats it). A resumed run (global step > 0) does not repeat it.
    Without validation data (or with ``limit_val_batches=0``) it does nothing.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0 or not trainer.enable_validation:
            return
        rank_zero_info("Validating the starting model (step 0)")
        # As the training loop runs its own validations (fit_loop.epoch_loop.on_advance_end): the
        # stage flag picks the validation results and hooks, and the loop restores the train mode
        # of every submodule when it ends. No training batch has started yet, so the logging
        # state the training loop saves around its validations is still the fresh one that the
        # validation loop leaves behind.
        trainer.validating = True
        try:
            trainer.fit_loop.epoch_loop.val_loop.run()
        finally:
            trainer.training = True
