"""Run guards: never write a non-finite update, stop on repeated ones, warn on collapse."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)


NON_FINITE_ADVICE = ("Lower the learning rate, check the reward cues, or set a smaller "
                     "grpo.max_grad_norm.")


class NonFiniteUpdate(RuntimeError):
    """Raised after ``max_consecutive`` updates in a row had to be skipped."""


class UpdateGuard:
    """Counts skipped updates; ``max_consecutive`` skips in a row end the run with an error.

    A step whose reward, advantage, loss or gradient is not finite is skipped before the optimizer
    sees it, so the weights stay as they were; so is one without a record that sampling can take.
    """

    def __init__(self, max_consecutive: int = 3) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1 (got {max_consecutive})")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    @staticmethod
    def finite(x: Tensor) -> bool:
        return bool(torch.isfinite(x).all())

    def skip(self, what: str, ids: Sequence[str], step: int, cause: str | None = None,
             advice: str = NON_FINITE_ADVICE) -> None:
        """Count a skipped update: ``cause`` (default ``non-finite <what>``) says why."""
        self.skipped += 1
        self.consecutive += 1
        shown = ", ".join(dict.fromkeys(ids))
        log.warning("step %d: %s, update skipped (%d in a row); batch ids: %s",
                    step, cause or f"non-finite {what}", self.consecutive, shown)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteUpdate(
                f"{self.consecutive} updates in a row skipped, the last for "
                f"{cause or f'a non-finite {what}'} "
                f"(step {step}, batch ids: {shown}). {advice}")

    def ok(self) -> None:
        self.consecutive = 0

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped, self.consecutive = state["skipped"], state["consecutive"]


class CollapseMonitor:
    """Warns once all groups have had zero reward spread for ``patience`` steps in a row."""

    def __init__(self, patience: int = 20) -> None:
        if patience < 1:
            raise ValueError(f"collapse_patience must be >= 1 (got {patience})")
        self.patience = patience
        self.streak = 0

    def update(self, frac_zero_std_groups: float, temperature: float, step: int) -> bool:
        self.streak = self.streak + 1 if frac_zero_std_groups >= 1.0 else 0
        if self.streak == self.patience:
            log.warning("step %d: every group has had identical rewards for %d steps, so GRPO "
                        "gets no learning signal. Raise the sampling temperature (now %.2f; "
                        "model.sampling.temperature or the ConfidenceCooling bounds) or the "
                        "group size.", step, self.patience, temperature)
            return True
        return False
