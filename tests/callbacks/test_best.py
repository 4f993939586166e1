"""Keeping the best model: validation at step 0, best.ckpt by val/accuracy (ties to the earlier),
adapter/ exported from it, and a resumed run that neither repeats step 0 nor forgets the best.

The tiny model's real accuracy is ~0, so each test scripts val/accuracy per global step.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from peft import PeftModel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import Qwen2_5_VLForConditionalGeneration

import srmcr.evaluation
from callbacks.adapter import AdapterExport
from callbacks.best import BestCheckpoint, improves
from callbacks.checkpoints import StepCheckpoint
from callbacks.validate_start import ValidateAtStart
from datamodules.image_question import ImageQuestionDataModule
from srmcr.policy import resolve_model
from tests.fixtures import randomize_lora
from tests.test_module import _module


class Validations(L.Callback):
    """The global step of every validation, and whether the policy was in train mode after it."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.train_mode_at_steps: list[bool] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self.steps.append(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train_mode_at_steps.append(pl_module.model.training)


def _fit(root: Path, steps: int, scores: dict[int, float], monkeypatch, val: bool = True,
         ckpt_path: Path | None = None, extra: tuple[L.Callback, ...] = (),
         min_delta: float = 0.0):
    L.seed_everything(0)
    module = _module()
    module.configure_model()
    randomize_lora(module.model)  # LoRA B = 0 would make the start and early steps look alike
    real = srmcr.evaluation.eval_log_dict

    def scripted(prefix, stats, cue_means):  # a step without a score logs no accuracy
        logged = real(prefix, stats, cue_means)
        logged.pop(f"{prefix}/accuracy")
        if module.global_step in scores:
            logged[f"{prefix}/accuracy"] = scores[module.global_step]
        return logged
    monkeypatch.setattr(srmcr.evaluation, "eval_log_dict", scripted)
    data = ImageQuestionDataModule(train="shapes:train?n=32&size=56",
                                   val="shapes:val?n=2&size=56" if val else None, batch_size=2,
                                   min_pixels=28 * 28, max_pixels=56 * 56)
    validations = Validations()
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False, val_check_interval=2, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=TensorBoardLogger(root, name="run", version=0),
        callbacks=[ValidateAtStart(), AdapterExport(), validations,
                   StepCheckpoint(save_last=True, every_n_train_steps=2, save_top_k=-1,
                                   monitor="step", mode="max"),
                   BestCheckpoint(min_delta=min_delta), *extra])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, module, validations


def _ckpt_lora(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if "lora_" in k}


def _adapter_lora(folder: Path) -> dict[str, torch.Tensor]:
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_model("tiny:tiny"))
    adapted = PeftModel.from_pretrained(base, folder)
    return {k: v for k, v in adapted.state_dict().items() if "lora_" in k}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


# Step 0 = 0.5; step 2 ties it (step 0 stays best), step 4 beats it, step 6 ties step 4 (step 4
# stays best), step 8 is worse. The best is step 4, and it is neither the first nor the last.
SCORES = {0: 0.5, 2: 0.5, 4: 0.75, 6: 0.75, 8: 0.25}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("best")
    trainer, module, validations = _fit(root, 8, SCORES, monkeypatch)
    monkeypatch.undo()
    return Path(trainer.log_dir), module, validations


def test_validation_at_step_0_is_logged_and_leaves_train_mode(run):
    log_dir, _, validations = run
    assert validations.steps == [0, 2, 4, 6, 8]
    assert all(validations.train_mode_at_steps) and len(validations.train_mode_at_steps) == 8
    events = EventAccumulator(str(next(log_dir.glob("events.out.tfevents*"))))
    events.Reload()
    accuracy = [(s.step, s.value) for s in events.Scalars("val/accuracy")]
    # Lightning logs an in-training validation at its 0-based batch index (step k at k - 1).
    assert accuracy == [(0, 0.5), (1, 0.5), (3, 0.75), (5, 0.75), (7, 0.25)]


def test_best_checkpoint_by_accuracy_with_ties_to_the_earlier(run):
    log_dir, _, _ = run
    best = log_dir / "checkpoints" / "best.ckpt"
    assert _step(best) == 4
    assert sorted(p.name for p in (log_dir / "checkpoints").glob("best*")) == ["best.ckpt"]


def test_adapter_is_the_best_checkpoint_and_adapter_last_the_final_weights(run):
    log_dir, module, _ = run
    checkpoints = log_dir / "checkpoints"
    best, final = _ckpt_lora(checkpoints / "best.ckpt"), _ckpt_lora(checkpoints / "last.ckpt")
    assert _step(checkpoints / "last.ckpt") == 8
    assert any(not torch.equal(v, final[k]) for k, v in best.items())  # else the test is void
    _assert_same(_adapter_lora(log_dir / "adapter"), best)
    _assert_same(_adapter_lora(log_dir / "adapter_last"), final)
    # The module keeps its final weights, in step with the trainer's step and optimizer.
    held = {k: v for k, v in module.model.state_dict().items() if "lora_" in k}
    _assert_same(held, final)


def _start_lora() -> dict[str, torch.Tensor]:
    L.seed_everything(0)  # as _fit builds it
    module = _module()
    module.configure_model()
    randomize_lora(module.model)
    return {k: v for k, v in module.model.state_dict().items() if "lora_" in k}


def test_no_improvement_keeps_the_starting_model(tmp_path, monkeypatch):
    trainer, _, _ = _fit(tmp_path, 2, {0: 0.5, 2: 0.5}, monkeypatch)
    log_dir = Path(trainer.log_dir)
    assert _step(log_dir / "checkpoints" / "best.ckpt") == 0
    _assert_same(_adapter_lora(log_dir / "adapter"), _start_lora())
    assert any(not torch.equal(v, _start_lora()[k])
               for k, v in _ckpt_lora(log_dir / "checkpoints" / "last.ckpt").items())


def test_min_delta_replaces_the_kept_checkpoint_only_for_a_larger_gain(tmp_path, monkeypatch):
    # Against the kept one, not the previous: +0.125 at step 2 is within 0.2 of step 0; step 4,
    # +0.25 over step 0, replaces it; step 6, +0.125 over step 4, does not.
    scores = {0: 0.5, 2: 0.625, 4: 0.75, 6: 0.875}
    trainer, _, _ = _fit(tmp_path, 6, scores, monkeypatch, min_delta=0.2)
    assert _step(Path(trainer.log_dir) / "checkpoints" / "best.ckpt") == 4


def test_a_gain_within_min_delta_keeps_the_starting_model(tmp_path, monkeypatch):
    trainer, _, _ = _fit(tmp_path, 4, {0: 0.5, 2: 0.55, 4: 0.5625}, monkeypatch, min_delta=0.1)
    log_dir = Path(trainer.log_dir)
    assert _step(log_dir / "checkpoints" / "best.ckpt") == 0
    _assert_same(_adapter_lora(log_dir / "adapter"), _start_lora())


@pytest.mark.parametrize(("make", "match"), [
    (lambda: BestCheckpoint(min_delta=-0.01), r"^BestCheckpoint min_delta=-0.01: set it to 0 or "
                                              r"more"),
    (lambda: BestCheckpoint(mode="best"), r"^BestCheckpoint mode='best': set it to max or min$"),
    (lambda: BestCheckpoint(monitor=""), r"^BestCheckpoint monitor='': name a logged metric"),
    (lambda: BestCheckpoint(filename="a/b"), r"^BestCheckpoint filename='a/b': give a file name"),
    (lambda: AdapterExport(dirname=""), r"^AdapterExport dirname='': give a folder name$"),
    (lambda: AdapterExport(last_dirname="adapter"), r"^AdapterExport last_dirname='adapter': "
                                                    r"give a folder name other than dirname"),
    (lambda: AdapterExport(monitor=""), r"^AdapterExport monitor='': name the metric"),
])
def test_invalid_arguments(make, match):
    from srmcr.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        make()


def test_early_stopping_counts_from_the_start_and_exports_the_best(tmp_path, monkeypatch):
    stop = EarlyStopping(monitor="val/accuracy", mode="max", patience=2)
    trainer, _, validations = _fit(tmp_path, 20, {0: 0.5, 2: 0.75, 4: 0.5, 6: 0.75}, monkeypatch,
                                   extra=(stop,))
    assert validations.steps == [0, 2, 4, 6] and trainer.global_step == 6  # 2 without a gain
    log_dir = Path(trainer.log_dir)
    best = _ckpt_lora(log_dir / "checkpoints" / "best.ckpt")
    assert _step(log_dir / "checkpoints" / "best.ckpt") == 2
    _assert_same(_adapter_lora(log_dir / "adapter"), best)


def test_resume_neither_repeats_step_0_nor_forgets_the_best(tmp_path, monkeypatch):
    # The periodic step-4 checkpoint is written before step 4's validation makes best.ckpt step
    # 4, so its BestCheckpoint state still says step 0 (0.5). Resumed from it, step 6 (0.75) must
    # not replace best.ckpt: it only ties step 4, which the file on disk holds.
    first, _, _ = _fit(tmp_path, 4, SCORES, monkeypatch)
    checkpoints = Path(first.log_dir) / "checkpoints"
    assert _step(checkpoints / "best.ckpt") == 4
    trainer, _, validations = _fit(tmp_path, 8, SCORES, monkeypatch,
                                   ckpt_path=checkpoints / "epoch=0-step=4.ckpt")
    assert trainer.log_dir == first.log_dir
    assert validations.steps == [6, 8]  # no step 0, and Lightning does not repeat step 4
    assert _step(checkpoints / "best.ckpt") == 4


def test_without_validation_the_final_weights_are_exported(tmp_path, monkeypatch):
    trainer, module, validations = _fit(tmp_path, 1, {}, monkeypatch, val=False)
    log_dir = Path(trainer.log_dir)
    assert validations.steps == [] and not (log_dir / "adapter_last").exists()
    assert not list((log_dir / "checkpoints").glob("best*"))
    held = {k: v for k, v in module.model.state_dict().items() if "lora_" in k}
    _assert_same(_adapter_lora(log_dir / "adapter"), held)


@pytest.mark.parametrize(("score", "kept", "mode", "min_delta", "replaces"), [
    (0.1, None, "max", 0.0, True),  # the first candidate (step 0) is always kept
    (float("nan"), None, "max", 0.0, True),  # even without a number: something to export
    (0.5, 0.5, "max", 0.0, False),  # a tie keeps the earlier
    (0.51, 0.5, "max", 0.0, True),
    (0.55, 0.5, "max", 0.1, False),  # within min_delta of the kept one
    (0.625, 0.5, "max", 0.1, True),
    (0.4, 0.5, "min", 0.0, True),  # lower is better
    (0.5, 0.4, "min", 0.0, False),
    (float("nan"), 0.5, "max", 0.0, False),  # NaN never replaces a number
])
def test_improves(score, kept, mode, min_delta, replaces):
    assert improves(score, kept, mode, min_delta) is replaces


def test_validation_without_the_metric_warns_once_and_keeps_nothing(tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="no 'val/accuracy' logged") as caught:
        trainer, module, validations = _fit(tmp_path, 4, {}, monkeypatch)
    assert validations.steps == [0, 2, 4]
    assert len([w for w in caught if "val/accuracy" in str(w.message)]) == 1
    log_dir = Path(trainer.log_dir)
    assert not list((log_dir / "checkpoints").glob("best*"))
    held = {k: v for k, v in module.model.state_dict().items() if "lora_" in k}
    _assert_same(_adapter_lora(log_dir / "adapter"), held)  # the final weights
