"""Write the LoRA adapter (and the processor) as a PEFT folder at the end of fit: the best one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info

from callbacks.best import checkpoint_record
from srmcr.errors import require


def trainable_state(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """A copy of ``pl_module``'s trainable (LoRA) weights."""
    return {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}


def load_trainable(pl_module: L.LightningModule, path: str | Path) -> None:
    """Load a checkpoint's trainable (LoRA) weights into ``pl_module``; nothing else changes.

    Checkpoints hold only the trainable weights and the reward's state
    (``SRMCRModule.on_save_checkpoint``); the reward keeps its end-of-run state.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    trainable = {n for n, p in pl_module.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} of the {len(trainable)} trainable weights "
                         f"(e.g. {missing[0]}): it was not written by this run's model")
    pl_module.load_state_dict({k: state[k] for k in trainable}, strict=False)


class AdapterExport(L.Callback):
    """Save ``<log_dir>/adapter``: load it with ``PeftModel.from_pretrained(base, path)``.

    With ``from_best`` and a checkpoint callback that monitors ``monitor`` (``BestCheckpoint``, or
    a ``ModelCheckpoint``) holding a best checkpoint, ``adapter/`` has that checkpoint's weights
    (the starting model's when no validation beat it) and ``<last_dirname>/`` the final ones.
    Otherwise ``adapter/`` has the final weights. The module keeps its final weights either way,
    in step with the trainer's step and optimizer (a checkpoint saved after fit stays consistent).

    Args:
        dirname: Folder name under the run's log directory.
        from_best: Export the best checkpoint's weights when there is one.
        monitor: The metric whose checkpoint callback decides which checkpoint is best.
        last_dirname: Folder for the final weights when ``adapter/`` holds the best ones.
    """

    def __init__(self, dirname: str = "adapter", from_best: bool = True,
                 monitor: str = "val/accuracy", last_dirname: str = "adapter_last") -> None:
        require({
            f"AdapterExport dirname={dirname!r}: give a folder name": bool(dirname),
            f"AdapterExport last_dirname={last_dirname!r}: give a folder name other than "
            f"dirname={dirname!r}": bool(last_dirname) and last_dirname != dirname,
            f"AdapterExport monitor={monitor!r}: name the metric of the best checkpoint, e.g. "
            "val/accuracy": bool(monitor),
        })
        self.dirname, self.from_best = dirname, from_best
        self.monitor, self.last_dirname = monitor, last_dirname

    def best_checkpoint(self, trainer: L.Trainer) -> Checkpoint | None:
        """The checkpoint callback that monitors ``monitor`` and has saved a best, if any."""
        found = [cb for cb in trainer.checkpoint_callbacks
                 if getattr(cb, "monitor", None) == self.monitor
                 and getattr(cb, "best_model_path", "")]
        return found[0] if self.from_best and found else None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must ask, only rank 0 writes
        # (a rank-zero-only hook here left rank 0 waiting on a peer that had already exited).
        # Only rank 0 reads the best checkpoint too: the file may exist on its node alone.
        root = Path(trainer.log_dir or trainer.default_root_dir)
        best = self.best_checkpoint(trainer)
        if not trainer.is_global_zero:
            return
        out = root / self.dirname
        if best is None:
            self.save(pl_module, out)
            rank_zero_info(f"LoRA adapter (final weights, step {trainer.global_step}) written "
                           f"to {out}")
            return
        self.save(pl_module, root / self.last_dirname)
        record = checkpoint_record(best.best_model_path, best.state_key)
        final = trainable_state(pl_module)
        load_trainable(pl_module, best.best_model_path)
        self.save(pl_module, out)
        pl_module.load_state_dict(final, strict=False)
        score = "n/a" if record["score"] is None else f"{record['score']:.4f}"
        rank_zero_info(f"LoRA adapter from the best checkpoint, step {record['step']} of "
                       f"{trainer.global_step} ({self.monitor} = {score}), written to {out}; "
                       f"the final weights to {root / self.last_dirname}")

    @staticmethod
    def save(pl_module: L.LightningModule, out: Path) -> None:
        pl_module.model.save_pretrained(out)
        pl_module.processor.save_pretrained(out)
