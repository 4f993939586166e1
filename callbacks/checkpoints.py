"""Periodic checkpoints of a manually optimized module: the weights after the step they name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from callbacks.checkpoint_io import checkpoint_dir, save_or_warn
from srmcr.errors import require


class StepCheckpoint(Checkpoint):
    """``<log dir>/checkpoints/epoch=E-step=K.ckpt`` every ``every_n_train_steps`` optimizer
    steps, the newest ``save_top_k`` kept, ``last.ckpt``, and one when the run stops on an
    exception (SIGTERM, Ctrl-C, an error).

    A checkpoint of global step k holds the weights after step k's update, the trainer's count of k
    updates, the optimizer's state after them, the cooling state and the RNG states that the step
    after k draws from, so resuming from it continues the run exactly. (Lightning's
    ``ModelCheckpoint`` saves the same, but under manual optimization it warns at every save that
    the weights are not the pre-update ones: those would pair step k's optimizer state with step
    k - 1's weights.)

    Every file is written atomically (``callbacks.checkpoint_io``). A save that fails (a full disk,
    a read-only folder) warns in one line and changes nothing: the files already written stay,
    none is pruned, and training continues; the next save tries again.

    Args:
        every_n_train_steps: Save every this many optimizer steps (0 or null: no periodic save).
        save_top_k: Periodic checkpoints kept, the newest by step (-1: all, 0: none).
        save_last: Keep ``last.ckpt``, the newest state: at every save and at the end of fit.
        save_on_exception: Save when fit stops on an exception (a signal included).
    """

    def __init__(self, every_n_train_steps: int | None = None, save_top_k: int = 1,
                 save_last: bool = False, save_on_exception: bool = False) -> None:
        every = every_n_train_steps
        require({
            f"StepCheckpoint every_n_train_steps={every}: set it to 1 or more (0 or null: no "
            "periodic checkpoint)": every is None or every >= 0,
            f"StepCheckpoint save_top_k={save_top_k}: set it to -1 (keep all), 0 or more":
                save_top_k >= -1,
        })
        self.every_n_steps = every or 0
        self.save_top_k, self.save_last = save_top_k, save_last
        self.save_on_exception = save_on_exception
        self.dirpath: Path | None = None  # <log dir>/checkpoints, known at setup
        self.kept: list[str] = []  # state: the periodic checkpoints kept, oldest first
        self.latest: tuple[int, Path] | None = None  # (step, file) of the newest save
        self._saved_step: int | None = None  # None until training starts: nothing to save
        self.stop_note: str | None = None  # what it saved when the run stopped, for main.py

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dirpath = checkpoint_dir(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = trainer.global_step  # a resumed step is in the file resumed from

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 \
                and self._may_save(trainer):
            self._save(trainer, periodic=self.save_top_k != 0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._may_save(trainer):
            self._save(trainer, periodic=False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if self.save_on_exception and self._may_save(trainer):
            self._save(trainer, periodic=self.save_top_k != 0, then="the run stops without it")
        if self._saved_step is None:
            return
        if self.latest is None:
            self.stop_note = "no checkpoint written"
        else:
            step, path = self.latest
            self.stop_note = f"checkpoint {path}" + \
                ("" if step == trainer.global_step else f" (step {step}: the newest written)")

    def _may_save(self, trainer: L.Trainer) -> bool:
        return (trainer.state.fn == TrainerFn.FITTING and not trainer.fast_dev_run
                and not trainer.sanity_checking and self._saved_step is not None
                and self._saved_step != trainer.global_step)

    def _save(self, trainer: L.Trainer, periodic: bool, then: str = "training continues") -> None:
        assert self.dirpath is not None, "setup sets dirpath"
        step, failed = trainer.global_step, False
        if periodic:
            path = self.dirpath / f"epoch={trainer.current_epoch}-step={step}.ckpt"
            before = list(self.kept)
            self.kept = [p for p in self.kept if p != str(path)] + [str(path)]  # saved in it
            if save_or_warn(trainer, path, then):
                self.latest = (step, path)
                self._prune(trainer)
            else:
                self.kept, failed = before, True
        if self.save_last:
            if save_or_warn(trainer, self.dirpath / "last.ckpt", then):
                self.latest = (step, self.dirpath / "last.ckpt")
            else:
                failed = True
        if not failed:  # else the end of fit, or a stop, tries again
            self._saved_step = step

    def _prune(self, trainer: L.Trainer) -> None:
        """Remove the periodic checkpoints beyond the newest ``save_top_k``; never the one the
        run resumed from."""
        if self.save_top_k < 0 or len(self.kept) <= self.save_top_k:
            return
        old, self.kept = self.kept[:-self.save_top_k], self.kept[-self.save_top_k:]
        resumed = Path(trainer.ckpt_path).resolve() if trainer.ckpt_path else None
        for path in map(Path, old):
            if path.resolve() != resumed:
                trainer.strategy.remove_checkpoint(path)

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": None if self.dirpath is None else str(self.dirpath),
                "kept": list(self.kept)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A run resumed into another folder keeps its own files there, as ModelCheckpoint does.
        if self.dirpath is None or state_dict["dirpath"] == str(self.dirpath):
            self.kept = list(state_dict["kept"])
