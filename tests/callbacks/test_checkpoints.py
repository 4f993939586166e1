"""StepCheckpoint: periodic checkpoints of a manually optimized module holding the weights after
the step they name, written atomically, and a failed write that loses nothing."""

import errno
import logging
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.checkpoint_io import AtomicCheckpointIO, read_problem
from callbacks.checkpoints import StepCheckpoint
from srmcr.errors import ConfigError


class ManualModel(BoringModel):
    """Steps its optimizer inside ``training_step``, as SRMCRModule does; records its weights after
    every step, and raises at step ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.after: dict[int, torch.Tensor] = {}
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at:
            raise RuntimeError("a bug in step")
        opt = self.optimizers()
        loss = self.step(batch)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return {"loss": loss}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.after[self.global_step] = self.layer.weight.detach().clone()


def _fit(tmp_path, checkpoint: StepCheckpoint, steps: int = 4, model=None) -> ManualModel:
    model = model or ManualModel()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[checkpoint], default_root_dir=tmp_path,
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(model)
    return model


def _step(path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_periodic_saves_hold_the_weights_after_their_step_without_a_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _fit(tmp_path, StepCheckpoint(every_n_train_steps=2, save_top_k=-1,
                                              save_last=True))
    # Lightning's ModelCheckpoint warns at every save of a manually optimized module.
    assert not [w for w in caught if "manual optimization" in str(w.message)]
    folder = tmp_path / "checkpoints"
    for step in (2, 4):
        saved = torch.load(folder / f"epoch=0-step={step}.ckpt", weights_only=True)
        assert saved["global_step"] == step
        assert torch.equal(saved["state_dict"]["layer.weight"], model.after[step])
    assert _step(folder / "last.ckpt") == 4


def test_the_newest_top_k_are_kept_and_last_holds_the_end_of_fit(tmp_path):
    _fit(tmp_path, StepCheckpoint(every_n_train_steps=2, save_top_k=2, save_last=True), steps=7)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "last.ckpt"]
    assert _step(folder / "last.ckpt") == 7  # saved at the end of fit, between periodic saves


def test_an_exception_saves_the_step_it_stopped_at(tmp_path):
    with pytest.raises(RuntimeError, match="a bug in step"):
        _fit(tmp_path, StepCheckpoint(every_n_train_steps=2, save_top_k=0, save_last=True,
                                      save_on_exception=True), steps=6, model=ManualModel(3))
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == 3


def full_disk_at(monkeypatch, steps: set[int]) -> list[int]:
    """``torch.save`` of a checkpoint of one of ``steps`` writes part of the file, then fails as a
    full disk does; returns the steps it failed."""
    save, failed = torch.save, []

    def save_then_fail(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get("global_step") in steps):
            return save(obj, f, *args, **kwargs)
        failed.append(obj["global_step"])
        save(obj, f, *args, **kwargs)
        if hasattr(f, "truncate"):  # the disk filled up a third of the way through the file
            f.truncate(f.tell() // 3)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", save_then_fail)
    return failed


def test_a_full_disk_keeps_every_previous_checkpoint_and_training_goes_on(tmp_path, monkeypatch,
                                                                         caplog):
    failed = full_disk_at(monkeypatch, {4})
    with caplog.at_level(logging.WARNING, logger="callbacks.checkpoint_io"):
        model = _fit(tmp_path, StepCheckpoint(every_n_train_steps=2, save_top_k=1,
                                              save_last=True), steps=6)
    folder = tmp_path / "checkpoints"
    assert failed == [4, 4]  # the step file and last.ckpt
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        f"warning: could not write checkpoint {folder / 'epoch=0-step=4.ckpt'}: No space left on "
        "device; no epoch=0-step=4.ckpt was written, training continues",
        f"warning: could not write checkpoint {folder / 'last.ckpt'}: No space left on device; "
        "last.ckpt keeps its previous contents, training continues"]
    # Step 6 saved again, and pruned step 2 only then: nothing partial, no temporary file left.
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=6.ckpt", "last.ckpt"]
    assert _step(folder / "last.ckpt") == 6 and 6 in model.after


def test_a_failed_write_never_replaces_the_previous_file(tmp_path, monkeypatch):
    failed = full_disk_at(monkeypatch, {4})
    _fit(tmp_path, StepCheckpoint(every_n_train_steps=2, save_top_k=1, save_last=True))
    folder = tmp_path / "checkpoints"
    assert failed == [4, 4, 4]  # the step file, last.ckpt, last.ckpt again at the end of fit
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    for path in folder.iterdir():
        assert read_problem(path) is None and _step(path) == 2


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"every_n_train_steps": -1}, r"^StepCheckpoint every_n_train_steps=-1: set it to 1 or more"),
    ({"save_top_k": -2}, r"^StepCheckpoint save_top_k=-2: set it to -1 \(keep all\), 0 or more$"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StepCheckpoint(**kwargs)
