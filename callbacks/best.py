"""Keep the checkpoint with the best validation score, the starting model (step 0) included."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from srmcr.errors import ConfigError


def checkpoint_record(path: str | Path, state_key: str) -> dict[str, Any]:
    """``{"step", "score"}`` of a checkpoint written by a ``ModelCheckpoint``: its global step and
    the score that callback had just measured (``current_score`` in its own saved state)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("callbacks", {}).get(state_key, {})
    score = state.get("current_score")
    return {"step": int(ckpt["global_step"]), "score": None if score is None else float(score)}


class BestCheckpoint(ModelCheckpoint):
    """``checkpoints/best.ckpt``: the model with the best ``monitor`` of all validations so far.

    A ``ModelCheckpoint`` with ``save_top_k=1`` that also saves at step 0, so with
    ``ValidateAtStart`` the starting model is a candidate and training must beat it. Ties keep the
    earlier checkpoint (a later one must be strictly better), so the starting model wins ties.
    With ``min_delta`` a checkpoint must beat the kept one by more than that, so that a gain
    within the validation set's noise does not replace the starting model: measured on the toy
    world, checkpoints 3-4 points better than the start on 128 validation questions were 0.5-2
    points worse on 1024 held-out ones. Validation without the metric (no answers, hence no
    ``val/accuracy``) saves nothing and warns once, where a plain ``ModelCheckpoint`` would stop
    the run. ``AdapterExport`` exports from it.

    Args:
        monitor: Logged validation metric to rank checkpoints by.
        mode: "max" keeps the highest value, "min" the lowest.
        min_delta: How much better than the kept checkpoint a new one must be (in the metric's
            units; for accuracy on n questions about two standard errors of a paired
            difference, 2 * sqrt(share of answers that change / n): 0.05-0.08 for 128-64).
        filename: Checkpoint name, without ``.ckpt``.
        verbose: Print every decision.
    """

    def __init__(self, monitor: str = "val/accuracy", mode: Literal["max", "min"] = "max",
                 min_delta: float = 0.0, filename: str = "best", verbose: bool = False) -> None:
        if not min_delta >= 0:
            raise ConfigError(f"BestCheckpoint min_delta must be >= 0 (got {min_delta})")
        super().__init__(filename=filename, monitor=monitor, mode=mode, save_top_k=1,
                         verbose=verbose, auto_insert_metric_name=False,
                         save_on_train_epoch_end=False)
        self.min_delta = min_delta
        # ModelCheckpoint never saves at step 0 ("no steps were taken"); here the untrained
        # model is the baseline to keep when training does not improve on it.
        self._last_global_step_saved = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step > 0 and self.best_model_path:
            self._adopt_saved_best(trainer)

    def _adopt_saved_best(self, trainer: L.Trainer) -> None:
        # A resumed run restores this callback's state from the resumed checkpoint. The periodic
        # last.ckpt is written at the end of a training step, before that step's validation, which
        # may have replaced best.ckpt (and Lightning does not repeat it on resume): the file on
        # disk, not the restored state, holds the best so far.
        record = None
        if trainer.is_global_zero and Path(self.best_model_path).is_file():
            record = checkpoint_record(self.best_model_path, self.state_key)
        record = trainer.strategy.broadcast(record, src=0)
        if record is None or record["score"] is None:
            return
        score = torch.tensor(record["score"])
        if self.best_model_score is None or float(score) != float(self.best_model_score):
            rank_zero_info(f"{self.best_model_path} holds step {record['step']} "
                           f"({self.monitor} = {record['score']:.4f}): the best so far")
        self.best_k_models = {self.best_model_path: score}
        self.best_model_score = self.kth_value = score
        self.kth_best_model_path = self.best_model_path

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if current is None or not self.min_delta or not self.best_k_models:
            return super().check_monitor_top_k(trainer, current)
        kept = self.best_k_models[self.kth_best_model_path]
        gain = float(current - kept) if self.mode == "max" else float(kept - current)
        return trainer.strategy.reduce_boolean_decision(gain > self.min_delta)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.monitor not in monitor_candidates:
            rank_zero_warn(f"BestCheckpoint: no {self.monitor!r} logged at this validation "
                           "(validation data without answers?): no best checkpoint kept",
                           category=UserWarning)
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)
