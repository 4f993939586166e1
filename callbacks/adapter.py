"""Write the trained LoRA adapter (and the processor) as a PEFT folder at the end of fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class AdapterExport(L.Callback):
    """Save ``<log_dir>/adapter``: load it with ``PeftModel.from_pretrained(base, path)``.

    Args:
        dirname: Folder name under the run's log directory.
    """

    def __init__(self, dirname: str = "adapter") -> None:
        self.dirname = dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must ask, only rank 0 writes
        # (a rank-zero-only hook here left rank 0 waiting on a peer that had already exited).
        out = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(out)
            pl_module.processor.save_pretrained(out)
            rank_zero_info(f"LoRA adapter written to {out}")
