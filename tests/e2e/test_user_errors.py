"""Mistakes the user must fix end in one line, ``error: <message>``, before any model loads."""

import subprocess
import sys
import time
from dataclasses import replace

import pytest

from datamodules.image_question import ImageQuestionDataModule
from main import main
from srmcr.errors import DataError
from srmcr.module import SRMCRModule
from tests.e2e.test_main import ROOT

TINY = ["fit", "-c", str(ROOT / "configs/tiny.yaml")]
BAD_ROWS = ['{"image": "x.png"}', "not json", '{"question": "q"}', "[1]",
            '{"image": "absent.png", "question": "What is it?"}', "{", '{"image": 3}']


@pytest.fixture
def no_model_load(monkeypatch):
    """The checks must fail before ``configure_model``: on a 7B model loading takes minutes."""
    def fail(self):
        raise AssertionError("the model was loaded before the mistake was reported")
    monkeypatch.setattr(SRMCRModule, "configure_model", fail)
    monkeypatch.delenv("SRMCR_DEBUG", raising=False)


def _bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_ROWS) + "\n")
    return path


def _one_error_line(capsys, *args: str, config: list[str] = TINY) -> str:
    with pytest.raises(SystemExit) as done:
        main([*config, *args])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-2000:]
    return errors[0]


def test_a_file_of_bad_records_fails_before_the_model_loads(tmp_path, capsys, no_model_load):
    path = _bad_file(tmp_path)
    line = _one_error_line(capsys, f"--data.train={path}")
    assert line.startswith(f"error: data.train: no good record in a full pass over {path}: all "
                           f"{len(BAD_ROWS)} read are bad")
    # The first bad lines, in file order (the train stream reads them shuffled).
    shown = [f"{path}:{i}: " for i in range(1, 6)]
    assert all(s in line for s in shown) and f"{path}:6: " not in line
    assert [line.index(s) for s in shown] == sorted(line.index(s) for s in shown)


def test_bad_validation_data_fails_at_setup_too(tmp_path, capsys, no_model_load):
    line = _one_error_line(capsys, f"--data.val={_bad_file(tmp_path)}")
    assert line.startswith("error: data.val: no good record")


@pytest.mark.parametrize("args, message", [
    (["--data.train={tmp}/missing.jsonl"], "error: data.train: no such JSONL file: '{tmp}/missing"),
    (["--data.val={tmp}/*.jsonl"], "error: data.val: no file matches the glob '{tmp}/*.jsonl'"),
    (["--model.sampling.group_size=1"], "error: sampling.group_size=1: set it to 2 or more"),
    (["--model.sampling.group_size=10000"], "error: sampling.group_size=10000: set it to 1024 or "
                                            "less (a group's statistics compare every pair"),
    (["--model.optimizer.init_args.lr=-0.0001"], "error: model.optimizer (AdamW) refuses its "
                                                 "arguments: Invalid learning rate: -0.0001"),
    (["--model.policy.model={tmp}/no-model"], "error: policy.model '{tmp}/no-model' is neither an "
                                              "existing folder"),
    (["--data.batch_size=0"], "error: batch_size=0: set it to 1 or more"),
    (["--ckpt_path=last"], "error: --ckpt_path last: no lightning_logs/tiny/version_*"),
    (["--model.grpo.micro_batch_size=3"], "error: grpo.micro_batch_size=3 does not divide the 16"),
    (["--model.grpo.clip_low=0"], "error: grpo.clip_low=0.0: set it above 0 and below 1"),
    (["--model.reward.cues=[lexical_fidelity]", "--model.reward.anchor=answer_agreement"],
     "error: reward.anchor='answer_agreement' is not an enabled cue"),
    (["--model.reward.cues=[lexical_fidelity,grounding]"],
     "error: reward.cues: unknown cue 'grounding'; valid cues: answer_agreement, "),
    (["--model.reward.functions=[{{path: no_such_module_xyz:f}}]"],
     "error: reward.functions[0].path='no_such_module_xyz:f': cannot import"),
    (["--model.sampling.val_group_size=1"], "error: sampling.val_group_size=1: set it to 0 (off), "
                                            "2 to 1024"),
], ids=["missing file", "empty glob", "group_size=1", "group_size=10000", "negative lr",
        "model path", "batch_size=0", "ckpt last", "micro batch", "clip", "anchor",
        "unknown cue", "reward function", "val_group_size=1"])
def test_user_errors_print_one_line(tmp_path, monkeypatch, capsys, no_model_load, args, message):
    monkeypatch.chdir(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    assert _one_error_line(capsys, *args).startswith(message.format(tmp=tmp_path))


def test_srmcr_debug_shows_the_traceback(tmp_path, monkeypatch, no_model_load):
    monkeypatch.setenv("SRMCR_DEBUG", "1")
    with pytest.raises(DataError, match="no good record"):
        main([*TINY, f"--data.train={_bad_file(tmp_path)}"])
    with pytest.raises(ValueError, match="group_size=1: set it to 2 or more"):
        main([*TINY, "--model.sampling.group_size=1"])


def test_a_bug_keeps_its_traceback(monkeypatch, no_model_load):
    def bug(self, stage=None, **kwargs):
        raise ValueError("a bug in the code, not the user's to fix")
    monkeypatch.setattr(ImageQuestionDataModule, "setup", bug)
    with pytest.raises(ValueError, match="a bug in the code"):
        main(TINY)


def test_the_command_line_says_it_in_one_line_within_seconds(tmp_path):
    # One real process: no traceback on stderr, exit status 1, long before a model could load.
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), *TINY,
                           f"--data.train={_bad_file(tmp_path)}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.rstrip().splitlines()[-1].startswith("error: data.train: no good record")
    assert elapsed < 60, f"{elapsed:.0f} s: 6-8 s of imports and a few records should do"


@pytest.mark.parametrize("args, message", [
    (["--model.sampling.grup_size=3"],
     "error: unknown key 'model.sampling.grup_size': did you mean model.sampling.group_size or "
     "model.sampling.val_group_size?"),
    (["--trainer.max_stepz=3"],
     "error: unknown key 'trainer.max_stepz': did you mean trainer.max_steps or"),
    (["--modle.policy.model=tiny:tiny"],
     "error: unknown key 'modle.policy.model': did you mean model?"),
    (["--data.batch_sise=3"],
     "error: unknown key 'data.batch_sise': did you mean data.batch_size?"),
    (["--model.optimizer.init_args.lrr=1"],
     "error: unknown key 'model.optimizer.lrr': did you mean model.optimizer.lr?"),
    (["-c", "{tmp}/typo.yaml"],
     "error: unknown key 'model.grpo.bta': did you mean model.grpo.beta?"),
    (["-c", "{tmp}/callback.yaml"], "error: unknown key 'trainer.callbacks.min_delt' "
                                    "(callbacks.best.BestCheckpoint): did you mean "
                                    "trainer.callbacks.min_delta?"),
    (["--trainer.max_steps=ten"], "error: trainer.max_steps: expected int, got ten"),
    (["--model.sampling.val_group_size=all"], "error: model.sampling.val_group_size: expected int "
                                              "or null, got all"),
    (["--model.grpo.aggregation=mean"], "error: model.grpo.aggregation: expected one of 'grpo', "
                                        "'token', 'dr_grpo', got mean"),
    (["-c", "{tmp}/broken.yaml"], "error: -c {tmp}/broken.yaml: not valid YAML (while parsing a "
                                  "flow sequence at line 2, column 14: expected ',' or ']'"),
    (["-c", "{tmp}/absent.yaml"], "error: -c {tmp}/absent.yaml: no such config file"),
], ids=["cli key", "trainer key", "section", "data key", "optimizer key", "yaml key",
        "callback key", "int", "optional int", "literal", "yaml syntax", "missing config"])
def test_parser_mistakes_print_one_line_that_names_the_key(tmp_path, capsys, no_model_load, args,
                                                           message):
    (tmp_path / "typo.yaml").write_text("model:\n  grpo:\n    bta: 0.1\n")
    (tmp_path / "callback.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: callbacks.best.BestCheckpoint\n"
        "      init_args:\n        min_delt: 0.1\n")
    (tmp_path / "broken.yaml").write_text("trainer:\n  max_steps: [1\n")
    args = [a.format(tmp=tmp_path) for a in args]
    line = _one_error_line(capsys, *args)
    assert line.startswith(message.format(tmp=tmp_path)), line
    assert "usage:" not in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["fti", "-c", str(ROOT / "configs/tiny.yaml")],
     "error: unknown command 'fti': did you mean fit?"),
    (["-c", str(ROOT / "configs/tiny.yaml")], "error: no command: use one of fit, validate, test, "
                                              "predict, preflight"),
], ids=["typo", "none"])
def test_a_wrong_command_says_which_ones_exist(capsys, args, message):
    assert _one_error_line(capsys, config=args).startswith(message)


def test_help_still_shows_the_usage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


def test_an_unknown_key_on_the_command_line_exits_1_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), *TINY,
                           "--model.sampling.grup_size=3"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == "", done.stderr[-3000:]
    assert done.stderr.splitlines() == ["error: unknown key 'model.sampling.grup_size': did you "
                                        "mean model.sampling.group_size or "
                                        "model.sampling.val_group_size?"]


def test_a_config_the_memory_plan_cannot_fit_is_refused_before_loading(monkeypatch, capsys,
                                                                       no_model_load):
    from tools import memory

    monkeypatch.setattr(memory, "machine_budget", lambda accelerator: (
        1e9 if accelerator == "cpu" else 0.0, "this test machine's 1.0 GB of RAM"))
    big = ["--model.sampling.val_group_size=1024", "--data.batch_size=16"]
    planned = memory.plan(memory.settings_from_config(memory.load_config(
        [ROOT / "configs/tiny.yaml"], big)))
    assert planned.device_bytes > 1e9 > memory.plan(memory.settings_from_config(
        memory.load_config([ROOT / "configs/tiny.yaml"]))).device_bytes  # tiny.yaml fits
    line = _one_error_line(capsys, *big)
    assert line.startswith(f"error: this config's memory plan needs "
                           f"{planned.device_bytes / 1e9:.1f} GB (peak in the sampled validation "
                           "phase), more than this test machine's 1.0 GB of RAM: set ")
    assert "model.sampling.val_group_size to " in line


def test_a_config_that_fits_only_without_merged_decoding_trains_without_it(monkeypatch, caplog):
    from tools import memory

    class Loaded(Exception):
        pass

    seen = []

    def load(self):
        seen.append(self.sampling.merge_lora)
        raise Loaded

    monkeypatch.setattr(SRMCRModule, "configure_model", load)
    small = ["--model.grpo.micro_batch_size=1", "--model.sampling.val_group_size=0"]
    settings = memory.settings_from_config(memory.load_config([ROOT / "configs/tiny.yaml"], small))
    unmerged = memory.plan(replace(settings, merge_lora=False)).device_bytes
    assert memory.plan(settings).device_bytes > unmerged  # generation peaks with the copies
    monkeypatch.setattr(memory, "machine_budget", lambda accelerator: (unmerged, "this RAM"))
    with caplog.at_level("WARNING", logger="tools.memory"), pytest.raises(Loaded):
        main([*TINY, *small])
    assert seen == [False]
    assert [m.split(":")[0] for m in caplog.messages] == ["warning"]
    assert "model.sampling.merge_lora is off for this run" in caplog.messages[0]
