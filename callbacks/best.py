"""Keep the checkpoint with the best validation score, the starting model (step 0) included."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from srmcr.errors import require


def checkpoint_record(path: str | Path, state_key: str) -> dict[str, Any]:
    """``{"step", "score"}`` of a checkpoint kept by a best-checkpoint callback (``BestCheckpoint``
    or a ``ModelCheckpoint``): its global step and the score it was kept for, from the callback's
    own state saved in it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("callbacks", {}).get(state_key, {})
    score = state.get("best_model_score", state.get("current_score"))
    return {"step": int(ckpt["global_step"]), "score": None if score is None else float(score)}


def improves(score: float, kept: float | None, mode: Literal["max", "min"],
             min_delta: float) -> bool:
    """Whether ``score`` replaces the ``kept`` one: by more than ``min_delta`` in the direction of
    ``mode`` (a tie keeps the earlier); anything replaces nothing, a NaN score replaces nothing
    else."""
    if kept is None:
        return True
    gain = score - kept if mode == "max" else kept - score
    return not math.isnan(gain) and gain > min_delta


class BestCheckpoint(Checkpoint):
    """``checkpoints/best.ckpt``: the model with the best ``monitor`` of all validations so far.

    It decides at the end of every validation of a fit, the one at step 0 included, so with
    ``ValidateAtStart`` the starting model is a candidate and training must beat it. Ties keep the
    earlier checkpoint (a later one must be strictly better), so the starting model wins ties.
    With ``min_delta`` a checkpoint must beat the kept one by more than that, so that a gain
    within the validation set's noise does not replace the starting model: measured on the toy
    world, checkpoints 3-4 points better than the start on 128 validation questions were 0.5-2
    points worse on 1024 held-out ones. Validation without the metric (no answers, hence no
    ``val/accuracy``) saves nothing and warns once. ``AdapterExport`` exports from it.

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
        require({
            f"BestCheckpoint monitor={monitor!r}: name a logged metric, e.g. val/accuracy":
                bool(monitor),
            f"BestCheckpoint mode={mode!r}: set it to max or min": mode in ("max", "min"),
            f"BestCheckpoint min_delta={min_delta}: set it to 0 or more (0: any gain replaces "
            "the kept checkpoint)": min_delta >= 0,
            f"BestCheckpoint filename={filename!r}: give a file name without a folder":
                bool(filename) and "/" not in filename,
        })
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.filename, self.verbose = filename, verbose
        self.dirpath: Path | None = None  # <log dir>/checkpoints, known at setup
        # State, saved in checkpoints: the kept checkpoint, its score and step.
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.best_step: int | None = None
        self._warned = False

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}{{'monitor': {self.monitor!r}, 'mode': {self.mode!r}}}"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Where ModelCheckpoint puts its files: beside the first logger's run, else the root.
        if trainer.loggers:
            logger = trainer.loggers[0]
            version = logger.version if isinstance(logger.version, str) \
                else f"version_{logger.version}"
            run = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version
        else:
            run = Path(trainer.default_root_dir)
        self.dirpath = Path(trainer.strategy.broadcast(str(run / "checkpoints"), src=0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
        if self.best_model_score != record["score"]:
            rank_zero_info(f"{self.best_model_path} holds step {record['step']} "
                           f"({self.monitor} = {record['score']:.4f}): the best so far")
        self.best_model_score, self.best_step = record["score"], record["step"]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking \
                or trainer.fast_dev_run:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                rank_zero_warn(f"BestCheckpoint: no {self.monitor!r} logged at this validation "
                               "(validation data without answers?): no best checkpoint kept",
                               category=UserWarning)
                self._warned = True
            return
        score, step = float(value), trainer.global_step
        better = improves(score, self.best_model_score, self.mode, self.min_delta)
        if not trainer.strategy.reduce_boolean_decision(better):
            if self.verbose:
                rank_zero_info(f"step {step}: {self.monitor} = {score:.4f} does not beat "
                               f"{self.best_model_score:.4f} (step {self.best_step}) by more "
                               f"than {self.min_delta}")
            return
        assert self.dirpath is not None, "setup sets dirpath"
        # The state first: the checkpoint records the score it is kept for.
        self.best_model_path = str(self.dirpath / f"{self.filename}.ckpt")
        self.best_model_score, self.best_step = score, step
        trainer.save_checkpoint(self.best_model_path, weights_only=False)  # resumable
        if self.verbose:
            rank_zero_info(f"step {step}: {self.monitor} = {score:.4f}, the best so far: saved "
                           f"to {self.best_model_path}")

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": None if self.dirpath is None else str(self.dirpath),
                "best_model_path": self.best_model_path,
                "best_model_score": self.best_model_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A run resumed into another folder keeps its own best there, as ModelCheckpoint does.
        if self.dirpath is not None and state_dict["dirpath"] != str(self.dirpath):
            return
        self.best_model_path = state_dict["best_model_path"]
        self.best_model_score = state_dict["best_model_score"]
        self.best_step = state_dict["best_step"]
