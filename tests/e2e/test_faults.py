"""No full disk, unreadable checkpoint, read-only folder or failing record ends a run through
``main.py`` with a traceback, and none loses the previous checkpoint."""

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.checkpoint_io import read_problem
from main import main
from tests.callbacks.test_checkpoints import full_disk_at
from tests.e2e.test_main import FAST, ROOT
from tests.e2e.test_user_errors import _one_error_line
from tests.test_record_faults import FailingRecords

# Checkpoints every 2 steps, all kept, last.ckpt, one on an exception; adapter/ at the end.
CALLBACKS = """trainer:
  callbacks:
    - class_path: callbacks.adapter.AdapterExport
    - class_path: callbacks.checkpoints.StepCheckpoint
      init_args: {every_n_train_steps: 2, save_top_k: -1, save_last: true, save_on_exception: true}
"""


def _args(tmp_path: Path, *extra: str, command: str = "fit") -> list[str]:
    (tmp_path / "callbacks.yaml").write_text(CALLBACKS)
    return [command, "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(tmp_path / "callbacks.yaml"),
            *FAST, "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", *extra]


def _step(path: Path) -> int:
    assert read_problem(path) is None, read_problem(path)
    return torch.load(path, weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> Path:
    """A finished 4-step run: checkpoints at steps 2 and 4, and last.ckpt (step 4)."""
    root = tmp_path_factory.mktemp("run")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        main(_args(root, "--trainer.max_steps=4"))
    finally:
        os.chdir(cwd)
    return root


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run / "lightning_logs", tmp_path / "lightning_logs")
    shutil.copy(run / "callbacks.yaml", tmp_path / "callbacks.yaml")
    return tmp_path / "lightning_logs" / "tiny" / "version_0" / "checkpoints"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 6])  # what a full disk left in the probe: 266 of 1660 KB


@pytest.mark.slow
def test_a_full_disk_while_saving_warns_and_training_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    failed = full_disk_at(monkeypatch, {4})
    with caplog.at_level(logging.WARNING, logger="callbacks.checkpoint_io"):
        cli = main(_args(tmp_path, "--trainer.max_steps=4"))
    run = Path(cli.trainer.log_dir)
    folder = run / "checkpoints"
    assert cli.trainer.global_step == 4 and failed == [4, 4, 4]
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"warning: could not write checkpoint {folder}/{name}: No space left on device"
        for name in ("epoch=0-step=4.ckpt", "last.ckpt", "last.ckpt")]
    # Nothing partial under a final name, no temporary file left; step 2 loads from both files.
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert _step(folder / "epoch=0-step=2.ckpt") == _step(folder / "last.ckpt") == 2
    assert (run / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fit", "predict"])
def test_an_unreadable_checkpoint_is_one_error_line(four_steps, tmp_path, monkeypatch, capsys,
                                                   command):
    monkeypatch.chdir(tmp_path)
    folder = _copy(four_steps, tmp_path)
    _truncate(folder / "last.ckpt")
    line = _one_error_line(capsys, config=_args(tmp_path, "--trainer.max_steps=6",
                                                f"--ckpt_path={folder / 'last.ckpt'}",
                                                command=command))
    assert line == (f"error: --ckpt_path {folder / 'last.ckpt'}: cannot read this checkpoint (no "
                    "zip directory at its end: the file is truncated or not a checkpoint); the "
                    f"newest readable one beside it is {folder / 'epoch=0-step=4.ckpt'} (step 4)")
    assert _step(folder / "epoch=0-step=4.ckpt") == 4


@pytest.mark.slow
def test_ckpt_path_last_resumes_from_the_newest_readable_checkpoint(four_steps, tmp_path,
                                                                    monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    folder = _copy(four_steps, tmp_path)
    _truncate(folder / "last.ckpt")
    with caplog.at_level(logging.WARNING, logger="callbacks.checkpoint_io"):
        cli = main(_args(tmp_path, "--trainer.max_steps=6", "--ckpt_path=last"))
    assert [r.getMessage() for r in caplog.records] == [
        "warning: --ckpt_path last: cannot read lightning_logs/tiny/version_0/checkpoints/"
        "last.ckpt (no zip directory at its end: the file is truncated or not a checkpoint); "
        "resuming from lightning_logs/tiny/version_0/checkpoints/epoch=0-step=4.ckpt (step 4), "
        "the newest checkpoint that can be read"]
    assert cli.trainer.global_step == 6
    assert Path(cli.trainer.ckpt_path).name == "epoch=0-step=4.ckpt"  # where it resumed from
    assert _step(folder / "last.ckpt") == 6 and _step(folder / "epoch=0-step=4.ckpt") == 4


@pytest.mark.slow
def test_an_adapter_that_cannot_be_written_keeps_the_previous_one(four_steps, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = _copy(four_steps, tmp_path)
    adapter = folder.parent / "adapter"
    before = (adapter / "adapter_model.safetensors").read_bytes()
    save = PeftModel.save_pretrained

    def save_then_fail(self, path, *args, **kwargs):  # the disk fills up as the folder is written
        save(self, path, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(PeftModel, "save_pretrained", save_then_fail)
    line = _one_error_line(capsys, config=_args(tmp_path, "--trainer.max_steps=6",
                                                "--ckpt_path=last"))
    assert line == (f"error: could not write the adapter to {adapter.relative_to(tmp_path)}: No "
                    "space left on device")
    assert (adapter / "adapter_model.safetensors").read_bytes() == before  # step 4's, whole
    assert sorted(p.name for p in adapter.parent.iterdir() if p.name.startswith(".")) == []
    assert _step(folder / "last.ckpt") == 6  # and resuming from it exports again


def _read_only(monkeypatch, root: Path) -> None:
    """What a read-only ``root`` does: the OS refuses to create a file or folder under it."""
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if Path(os.fsdecode(path)).absolute().is_relative_to(root):
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
            return real(path, *args, **kwargs)
        return call
    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))


@pytest.mark.slow
def test_an_output_folder_that_cannot_be_written_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "out"
    root.mkdir()
    _read_only(monkeypatch, root)
    line = _one_error_line(capsys, config=_args(tmp_path, f"--trainer.default_root_dir={root}"))
    assert line == (f"error: cannot write the run's outputs to {root}/lightning_logs (it would be "
                    f"created in {root}): Permission denied; make it writable or set "
                    "--trainer.default_root_dir to a writable folder")


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_error_line_and_keeps_its_checkpoints(four_steps, tmp_path,
                                                                           monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = _copy(four_steps, tmp_path)
    run = folder.parent
    for path in [*run.rglob("*"), run]:
        path.chmod(path.stat().st_mode & ~0o222)
    if os.access(run, os.W_OK):
        pytest.skip("chmod does not stop this user (root) from writing")
    try:
        line = _one_error_line(capsys, config=_args(tmp_path, "--trainer.max_steps=6",
                                                    "--ckpt_path=last"))
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert line == (f"error: cannot write the run's outputs to {run.relative_to(tmp_path)}: "
                    "Permission denied; make it writable or set --trainer.default_root_dir to a "
                    "writable folder")
    assert _step(folder / "last.ckpt") == 4


def _scalars(run: Path, key: str) -> list[tuple[int, float]]:
    values = []
    for file in sorted(run.glob("events.out.tfevents*")):
        events = EventAccumulator(str(file))
        events.Reload()
        values += [(s.step, s.value) for s in events.Scalars(key)]
    return values


@pytest.mark.slow
def test_a_record_that_fails_in_the_step_is_skipped_through_fit_and_resume(tmp_path, monkeypatch,
                                                                           caplog):
    monkeypatch.chdir(tmp_path)
    injected = FailingRecords(monkeypatch)  # the first batch's second record
    with caplog.at_level(logging.WARNING, logger="srmcr.record_faults"):
        cli = main(_args(tmp_path, "--trainer.max_steps=2"))
        assert cli.trainer.global_step == 2 and cli.model.skipped_records["unprocessable"] == 1
        # The resumed run meets a batch with no good record: skipped, the run goes on.
        injected.bad, injected.choose = None, lambda ids: ids
        cli = main(_args(tmp_path, "--trainer.max_steps=4", "--ckpt_path=last"))
    assert cli.trainer.global_step == 4 and cli.model.guard.skipped == 1
    assert cli.model.skipped_records["unprocessable"] == 3  # 1 before the resume, 2 after
    warned = [r.getMessage() for r in caplog.records if r.name == "srmcr.record_faults"]
    assert [line.split(" skipped")[0] for line in warned] == [
        *(f"warning: step 1: record {i}" for i in injected.picked[0]),
        *(f"warning: step 3: record {i}" for i in injected.picked[1])]
    run = Path(cli.trainer.log_dir)
    assert _scalars(run, "data/skipped/unprocessable")[-1] == (3, 3.0)
    assert _step(run / "checkpoints" / "epoch=0-step=2.ckpt") == 2
    assert _step(run / "checkpoints" / "last.ckpt") == 4
