"""A reward function of the user's, named by import path on the command line, trains a run."""

import lightning as L
import pytest

from main import main
from tests.e2e.test_main import FAST, ROOT

PATH = "tests.e2e.test_reward_functions:shortness"


def shortness(prompts, completions, **fields):
    """1 / (1 + characters): a user's reward, defined outside srmcr and found by import path."""
    assert set(fields) == {"id", "source"}  # no labels unless the entry asks for them
    return [1.0 / (1 + len(c)) for c in completions]


class KeepStep(L.Callback):
    """Keeps the last training step's record (``training_step``'s outputs)."""

    last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        KeepStep.last = outputs["step"]


def test_a_user_function_alone_is_the_training_reward(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), *FAST, "--trainer.fast_dev_run=2",
                "--data.val=shapes:val?n=2&size=56", "--model.reward.cues=[]",
                f"--model.reward.functions=[{{path: {PATH}, weight: 0.5}}]",
                "--trainer.callbacks+=tests.e2e.test_reward_functions.KeepStep"])
    step = KeepStep.last
    values = shortness(None, step.rollout.texts, id=None, source=None)
    assert cli.model.reward.names == ["shortness"]
    assert step.reward.scores[:, 0].tolist() == pytest.approx(values)
    metrics = cli.trainer.callback_metrics
    mean = sum(values) / len(values)
    assert float(metrics["train/reward_raw"]) == pytest.approx(mean)
    assert float(metrics["train/reward/shortness"]) == pytest.approx(mean)
    assert float(metrics["train/weight/shortness"]) == 1.0  # the only column
    assert 0.0 < float(metrics["val/reward/shortness"]) < 1.0  # its mean over greedy completions


def one_short(prompts, completions, **fields):
    return [0.5] * (len(completions) - 1)


def test_a_function_that_returns_too_few_values_ends_the_run_in_one_line(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SRMCR_DEBUG", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), *FAST, "--trainer.fast_dev_run=1",
              "--data.val=null", "--model.reward.cues=[lexical_fidelity]",
              "--model.reward.functions=[{path: tests.e2e.test_reward_functions:one_short}]"])
    assert done.value.code == 1
    err = capsys.readouterr().err.rstrip()
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("error: reward function tests.e2e.test_reward_functions:"
                                    "one_short returned 7 values for 8 completions: return one "
                                    "number per completion (None to abstain)")
