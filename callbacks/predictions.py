"""Write ``python main.py predict`` results as JSON lines, one completion per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class PredictionWriter(L.Callback):
    """Append each predict batch's rows (``SRMCRModule.predict_step``) to a JSONL file.

    Each line: ``id``, ``source``, ``question``, ``answer`` (the reference, or null),
    ``completion``, ``steps``, ``parsed_answer``, ``well_formed``, ``correct`` (null without a
    reference), ``completion_len``, ``truncated`` and ``scores`` (every cue's raw score in [0, 1],
    visual grounding included; null where the cue abstains). Other subcommands ignore it.

    Args:
        path: The JSONL file (overwritten); default ``<log_dir>/predictions.jsonl``. With several
            ranks, rank r > 0 writes ``predictions.rank<r>.jsonl`` beside it.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._file: IO[str] | None = None
        self.written: Path | None = None

    def output_path(self, trainer: L.Trainer) -> Path:
        path = self.path or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl"
        if trainer.global_rank > 0:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = self.output_path(trainer)
        self.written.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.written.open("w", encoding="utf-8")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             outputs: list[dict[str, Any]], batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        assert self._file is not None
        for row in outputs:
            self._file.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()  # a long predict run can be followed (and survives a crash)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            rank_zero_info(f"Predictions written to {self.written}")
