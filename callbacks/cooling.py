"""Confidence-aware cooling of the sampling temperature: a pure rule and a thin callback."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L

from srmcr.errors import require


def base_temperature(step: int, t_start: float, t_end: float, cooling_steps: int) -> float:
    """Linear schedule from ``t_start`` at step 0 to ``t_end`` at ``cooling_steps``, then flat."""
    return t_end + (t_start - t_end) * max(0.0, 1.0 - step / cooling_steps)


def cooled_temperature(
    step: int,
    confidence_ema: float,
    collapse: float,
    *,
    t_start: float = 1.0,
    t_end: float = 0.7,
    cooling_steps: int = 1000,
    kappa: float = 2.0,
    c_target: float,
    t_min: float = 0.3,
    t_max: float = 1.5,
    reheat: float = 1.25,
    collapse_threshold: float = 0.5,
) -> float:
    """The rule of docs/design.md:
    ``clip(T_base(step) * exp(kappa * (c_ema - c_target)), t_min, t_max)``, times ``reheat`` when
    ``collapse > collapse_threshold``.

    Confidence above the target raises T; below it lowers T. The reheat is applied after the
    clip, as docs/design.md writes it, so a collapse lifts T even when T sits at ``t_min``; the
    result is clipped again, so it always lies in ``[t_min, t_max]`` (at ``t_max`` a reheat
    changes nothing).
    """
    t = base_temperature(step, t_start, t_end, cooling_steps)
    t = min(max(t * math.exp(kappa * (confidence_ema - c_target)), t_min), t_max)
    if collapse > collapse_threshold:
        t = min(t * reheat, t_max)
    return t


class ConfidenceCooling(L.Callback):
    """Sets ``pl_module.temperature`` after every training batch from the model's confidence.

    Reads ``confidence`` (mean max-prob at T = 1) and ``collapse`` (share of groups with
    identical completions), both already averaged across ranks, from the outputs of the module's
    ``training_step``, and logs ``train/confidence_ema``. The module logs the rest of the step
    (``train/temperature`` used for its sampling, ``train/confidence``, ``train/collapse``), with
    or without this callback.
    Remove the callback to sample at the module's fixed ``temperature``.

    Args:
        t_start: Base temperature at step 0.
        t_end: Base temperature once ``cooling_steps`` optimizer steps have passed.
        cooling_steps: Number of optimizer steps of the linear cooling from t_start to t_end;
            None spans the whole run (``trainer.max_steps``, or 1000 without one).
        kappa: Strength of the confidence term: T is multiplied by exp(kappa * (c_ema - c_target)).
        c_target: Target confidence, in [0, 1]; "auto" uses the mean confidence of the first
            ``auto_steps`` steps (T follows the base schedule until then).
        auto_steps: Number of steps averaged to resolve ``c_target="auto"``.
        ema: Momentum of the confidence EMA (0 = no smoothing).
        t_min: Lower bound of the temperature.
        t_max: Upper bound of the temperature.
        reheat: Factor applied to T on a step whose collapse exceeds ``collapse_threshold``.
        collapse_threshold: Share of collapsed groups above which T is reheated.
    """

    def __init__(
        self,
        t_start: float = 1.0,
        t_end: float = 0.7,
        cooling_steps: int | None = None,
        kappa: float = 2.0,
        c_target: float | Literal["auto"] = "auto",
        auto_steps: int = 10,
        ema: float = 0.9,
        t_min: float = 0.3,
        t_max: float = 1.5,
        reheat: float = 1.25,
        collapse_threshold: float = 0.5,
    ) -> None:
        require({
            f"ConfidenceCooling t_min={t_min}: set it above 0": t_min > 0,
            f"ConfidenceCooling t_max={t_max}: set it to t_min={t_min} or more, and finite":
                t_min <= t_max < math.inf,
            f"ConfidenceCooling t_start={t_start}: set it above 0": 0 < t_start < math.inf,
            f"ConfidenceCooling t_end={t_end}: set it above 0": 0 < t_end < math.inf,
            f"ConfidenceCooling cooling_steps={cooling_steps}: set it to 1 or more, or null (the "
            "whole run)": cooling_steps is None or cooling_steps >= 1,
            f"ConfidenceCooling kappa={kappa}: set it to 0 (no confidence term) or more":
                0 <= kappa < math.inf,
            f"ConfidenceCooling c_target={c_target!r}: set it to auto or a confidence in [0, 1]":
                c_target == "auto" or (not isinstance(c_target, str) and 0 <= c_target <= 1),
            f"ConfidenceCooling auto_steps={auto_steps}: set it to 1 or more": auto_steps >= 1,
            f"ConfidenceCooling ema={ema}: set it to at least 0 (no smoothing) and below 1":
                0 <= ema < 1,
            f"ConfidenceCooling reheat={reheat}: set it to 1 (off) or more": 1 <= reheat < math.inf,
            f"ConfidenceCooling collapse_threshold={collapse_threshold}: set it in [0, 1]":
                0 <= collapse_threshold <= 1,
        })
        self.rule = dict(t_start=t_start, t_end=t_end, cooling_steps=cooling_steps, kappa=kappa,
                         t_min=t_min, t_max=t_max, reheat=reheat,
                         collapse_threshold=collapse_threshold)
        self.fixed_target = None if c_target == "auto" else float(c_target)
        self.auto_steps = auto_steps
        self.ema = ema
        # State, saved in checkpoints. None = not known yet.
        self.temperature: float | None = None
        self.confidence_ema: float | None = None
        self.c_target: float | None = self.fixed_target
        self.auto_sum = 0.0
        self.auto_count = 0

    def temperature_at(self, step: int, collapse: float = 0.0) -> float:
        """The rule at ``step`` from this state; no confidence term until c_target is known."""
        ema = 0.0 if self.confidence_ema is None else self.confidence_ema
        target = ema if self.c_target is None else self.c_target
        return cooled_temperature(step, ema, collapse, c_target=target, **self.rule)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "temperature"):
            raise AttributeError(f"{type(pl_module).__name__} has no `temperature` attribute "
                                 "for ConfidenceCooling to set")
        if self.rule["cooling_steps"] is None:  # the schedule spans the run
            self.rule["cooling_steps"] = trainer.max_steps if trainer.max_steps > 0 else 1000
        # Restored from a checkpoint on resume (same on every rank), else the rule at this step.
        if self.temperature is None:
            self.temperature = self.temperature_at(trainer.global_step)
        pl_module.temperature = self.temperature

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not isinstance(outputs, Mapping) or not {"confidence", "collapse"} <= outputs.keys():
            raise TypeError(f"ConfidenceCooling reads 'confidence' and 'collapse' from "
                            f"{type(pl_module).__name__}.training_step's returned dict")
        confidence, collapse = float(outputs["confidence"]), float(outputs["collapse"])
        # A step without completion tokens has no confidence (NaN): keep the EMA as it is.
        if math.isfinite(confidence):
            self._observe(confidence)
        self.temperature = self.temperature_at(trainer.global_step, collapse)
        # Inputs are rank-averaged already; broadcasting rank 0's state removes float drift.
        state = trainer.strategy.broadcast(self.state_dict(), src=0)
        self.load_state_dict(state)
        pl_module.temperature = self.temperature
        # Every rank holds the same value: no sync needed.
        if self.confidence_ema is not None:
            pl_module.log("train/confidence_ema", self.confidence_ema, on_step=True,
                          on_epoch=False, batch_size=1)

    def _observe(self, confidence: float) -> None:
        """Update the EMA (the first value initialises it) and, while auto, the c_target average."""
        if self.confidence_ema is None:
            self.confidence_ema = confidence
        else:
            self.confidence_ema = self.ema * self.confidence_ema + (1.0 - self.ema) * confidence
        if self.c_target is None:
            self.auto_sum += confidence
            self.auto_count += 1
            if self.auto_count >= self.auto_steps:
                self.c_target = self.auto_sum / self.auto_count

    def state_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "confidence_ema": self.confidence_ema,
                "c_target": self.c_target, "auto_sum": self.auto_sum, "auto_count": self.auto_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.temperature = state_dict["temperature"]
        self.confidence_ema = state_dict["confidence_ema"]
        # A c_target given explicitly in this run's config wins over the checkpoint's.
        restored = state_dict["c_target"]
        self.c_target = self.fixed_target if self.fixed_target is not None else restored
        self.auto_sum = state_dict["auto_sum"]
        self.auto_count = state_dict["auto_count"]
