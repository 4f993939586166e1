"""The pre-flight report: will label-free training help this model on this data?

``python main.py preflight -c <config> --data.val <labelled.jsonl>`` runs one validation pass
with this callback: greedy accuracy, mean@G, maj@G, and the within-group AUC of the reward and
of every cue against correctness with 95% intervals (``srmcr.validity``), then a one-line
verdict. Labels only measure here.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from srmcr import validity
from srmcr.errors import require


class PreflightReport(L.Callback):
    """Collect the sampled validation of every batch; print the report at the end.

    Args:
        save_to: also write the collected signals (``torch.save``) for offline analysis.
        bootstrap_samples: resamples of the questions for the 95% intervals.
    """

    def __init__(self, save_to: Path | None = None, bootstrap_samples: int = 2000) -> None:
        require({f"PreflightReport bootstrap_samples={bootstrap_samples}: set it to 1 or more":
                 bootstrap_samples >= 1})
        self.save_to = save_to
        self.bootstrap_samples = bootstrap_samples
        self.batches: list[validity.ValidityBatch] = []
        self.summary: dict | None = None
        self.text = ""

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches = []
        pl_module.validation_learns_reliability = True  # as the first training steps would

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if isinstance(outputs, validity.ValidityBatch):
            self.batches.append(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        greedy = float(pl_module.eval_metrics.compute()["accuracy"])
        self.summary = validity.summarize(self.batches, self.bootstrap_samples)
        self.summary["greedy_accuracy"] = greedy
        self.text = validity.format_report(self.summary, greedy)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, after the validation progress bar has finished drawing.
        if trainer.is_global_zero:
            print(self.text, flush=True)
            if self.save_to is not None:
                torch.save({"summary": self.summary, "batches": self.batches}, self.save_to)
