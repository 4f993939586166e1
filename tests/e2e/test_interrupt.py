"""A run killed with SIGTERM saves a checkpoint, and ``--ckpt_path last`` continues it."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from main import latest_run, main
from tests.e2e.test_main import FAST, ROOT


@pytest.mark.slow
def test_sigterm_saves_and_ckpt_path_last_resumes(tmp_path, monkeypatch):
    args = ["fit", "-c", str(ROOT / "configs/tiny.yaml"), *FAST,
            "--trainer.logger.init_args.save_dir=logs", "--trainer.limit_val_batches=0",
            "--trainer.max_steps=10000"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "logs" / "tiny" / "version_0"
    deadline = time.monotonic() + 240
    while not list(run.glob("events.out.tfevents*")) or \
            list(run.glob("events.out.tfevents*"))[0].stat().st_size < 2000:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no training step within 240 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert "SIGTERMException" in err or "SIGTERM" in err
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    step = saved["global_step"]
    assert step >= 1

    monkeypatch.chdir(tmp_path)
    assert latest_run(tmp_path / "logs" / "tiny") == run
    cli = main([*args[:-1], f"--trainer.max_steps={step + 2}", "--ckpt_path=last"])
    assert cli.trainer.global_step == step + 2
    assert Path(cli.trainer.log_dir).resolve() == run  # the same TensorBoard run continues


def test_ckpt_path_last_without_a_run_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .*version_\\*/checkpoints/last.ckpt"):
        latest_run(tmp_path / "logs")
