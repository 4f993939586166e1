"""The command line end to end: every config parses, and tiny.yaml trains through main.py."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import Qwen2_5_VLForConditionalGeneration

from main import main
from srmcr.policy import resolve_model
from srmcr.prompts import SYSTEM_PROMPT, TINY_SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
# A fast variant of the CPU default: the tiny model, short completions, small images.
FAST = ["--model.policy.model=tiny:tiny", "--model.sampling.max_new_tokens=8",
        "--data.train=shapes:train?n=16&size=56", "--data.batch_size=2",
        "--model.policy.max_pixels=3136", "--data.max_pixels=3136", "--data.min_pixels=784"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, capsys):
    # Model configs are overlays on the CPU default; --print_config parses and type-checks the
    # merged config without loading a model or touching a GPU.
    overlay = [] if config.name == "tiny.yaml" else ["-c", str(config)]
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), *overlay, "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "policy:" in printed
    # tiny.yaml's short system prompt is for the tiny models; real-model overlays restore the
    # default, or a 7B model would be trained with a prompt written for a 4M-parameter toy.
    model = yaml.safe_load(printed)["model"]
    prompt = model.get("init_args", model)["sampling"]["system_prompt"]
    assert prompt == (SYSTEM_PROMPT if config.name.startswith("qwen") else TINY_SYSTEM_PROMPT)


def test_fast_dev_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), *FAST, "--trainer.fast_dev_run=2"])


def test_progress_bar_flag_turns_the_configs_step_bar_off(tmp_path, monkeypatch):
    # Lightning refuses a progress-bar callback beside enable_progress_bar=false; tiny.yaml lists
    # StepProgressBar, so the flag must drop it rather than fail.
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), *FAST, "--trainer.fast_dev_run=1",
                "--trainer.enable_progress_bar=false"])
    assert cli.trainer.progress_bar_callback is None
    assert any(type(c).__name__ == "BestCheckpoint" for c in cli.trainer.callbacks)


@pytest.mark.slow
def test_default_root_dir_holds_logs_checkpoints_and_adapter_and_resumes(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    root = tmp_path / "DIR"
    args = ["fit", "-c", str(ROOT / "configs/tiny.yaml"), *FAST,
            "--data.val=shapes:val?n=2&size=56", f"--trainer.default_root_dir={root}"]
    main([*args, "--trainer.max_steps=2"])
    run = root / "lightning_logs" / "tiny" / "version_0"
    assert list(run.glob("events.out.tfevents*")) and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert not list((tmp_path / "elsewhere").iterdir())  # nothing lands in the working folder
    cli = main([*args, "--trainer.max_steps=3", "--ckpt_path=last"])
    assert cli.trainer.global_step == 3 and Path(cli.trainer.log_dir) == run


@pytest.mark.slow
def test_tiny_config_writes_scalars_checkpoint_and_adapter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The random tiny model never answers: call every other sampled completion right, so the
    # validation's groups mix right and wrong and the AUCs are defined.
    from srmcr import evaluation
    real = evaluation.correctness
    monkeypatch.setattr(evaluation, "correctness", lambda answers, refs: [
        i % 2 == 0 for i in range(len(answers))] if len(answers) > 2 else real(answers, refs))
    cli = main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), *FAST, "--trainer.max_steps=3",
                "--data.val=shapes:val?n=4&size=56", "--model.sampling.val_group_size=2"])
    run = Path(cli.trainer.log_dir)
    assert run.resolve() == tmp_path / "lightning_logs" / "tiny" / "version_0"  # the default
    events = EventAccumulator(str(next(run.glob("events.out.tfevents*"))))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in ["loss", "kl", "clip_frac", "reward", "reward_raw", "format_rate",
                "frac_zero_std_groups", "completion_len", "temperature", "confidence",
                "collapse", "reward/semantic_alignment", "weight/visual_grounding"]:
        assert f"train/{key}" in tags
    for key in ["accuracy", "sample_accuracy", "majority_accuracy", "majority_lead",
                "reward_auc", "mixed_groups",
                "auc/semantic_alignment", "auc/visual_grounding", "auc/answer_agreement",
                "auc/self_certainty", "auc/well_formed"]:
        assert f"val/{key}" in tags, key
    assert [e.step for e in events.Scalars("val/reward_auc")] == [0]  # the step-0 validation
    assert len(events.Scalars("train/loss")) == 3
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k or k.startswith("reward.")
                                      for k in ckpt["state_dict"])
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_model("tiny:tiny"))
    adapted = PeftModel.from_pretrained(base, run / "adapter_last")  # the final weights
    trained = cli.model.model.state_dict()
    for name, value in adapted.state_dict().items():
        if "lora_" in name:
            assert torch.equal(value, trained[name])


@pytest.mark.parametrize("logger, save_dir", [
    ({"name": "tiny", "save_dir": "<trainer.default_root_dir>/lightning_logs"}, "R/lightning_logs"),
    ({"name": "lightning_logs", "save_dir": "<trainer.default_root_dir>/lightning_logs"}, "R"),
    ({"name": "tiny", "save_dir": "mine"}, "mine"),  # an explicit save_dir wins
], ids=["named", "unnamed", "explicit"])
def test_a_logger_without_save_dir_logs_under_the_root_dir(logger, save_dir):
    from jsonargparse import Namespace

    from main import DEFAULT_SAVE_DIR, _default_save_dir

    assert DEFAULT_SAVE_DIR == "<trainer.default_root_dir>/lightning_logs"
    trainer = Namespace(default_root_dir="R", logger=Namespace(
        class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=Namespace(**logger)))
    _default_save_dir(trainer)
    assert trainer.logger.init_args.save_dir == save_dir


@pytest.mark.slow
def test_a_first_run_prints_no_python_warning(tmp_path):
    # One real process with Python's default warning filters: what a user's console shows.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "fit", "-c", str(ROOT / "configs/tiny.yaml"),
         *FAST, "--data.val=shapes:val?n=2&size=56", "--trainer.max_steps=2",
         "--trainer.val_check_interval=2", f"--trainer.default_root_dir={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "adapter" in console  # it ran to the end
    warned = [line for line in console.splitlines()
              if re.search(r"Warning\b|\.py:\d+: |litlogger|def training_step|was not set", line)]
    assert warned == []
