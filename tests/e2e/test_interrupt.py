"""A run stopped by SIGTERM or Ctrl-C finishes its step, saves a checkpoint and ``adapter/``, exits
with 143 or 130, and ``--ckpt_path last`` continues it."""

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
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_saves_exports_exits_non_zero_and_ckpt_path_last_resumes(tmp_path, monkeypatch,
                                                                          signum):
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
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    # 128 + the signal's number, as a shell reports it: `fit && export` does not export.
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"{signum.name}: finishing the current step (step " in err
    last = run / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step >= 1
    assert err.rstrip().splitlines()[-1] == (
        f"stopped by {signum.name} after step {step}: checkpoint {last.relative_to(tmp_path)}, "
        f"adapter {(run / 'adapter').relative_to(tmp_path)} (final weights); resume with "
        "--ckpt_path last"), err[-3000:]
    assert "Traceback" not in err and "SIGTERMException" not in err
    assert (run / "adapter" / "adapter_config.json").is_file()
    if signum == signal.SIGINT:
        return

    monkeypatch.chdir(tmp_path)
    assert latest_run(tmp_path / "logs" / "tiny") == run
    cli = main([*args[:-1], f"--trainer.max_steps={step + 2}", "--ckpt_path=last"])
    assert cli.trainer.global_step == step + 2
    assert Path(cli.trainer.log_dir).resolve() == run  # the same TensorBoard run continues


def test_ckpt_path_last_without_a_run_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .*version_\\*/checkpoints/last.ckpt"):
        latest_run(tmp_path / "logs")
