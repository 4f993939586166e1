"""The user's own data through main.py: Parquet files and save_to_disk folders (written by
``datasets``), multiple-choice records, mapped column names, an image Qwen's processor rejects."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from callbacks.predictions import PredictionWriter
from main import main
from srmcr import evaluation
from srmcr.parsing import Parsed
from tests.datamodules.helpers import png, png_bytes, write_jsonl, write_table
from tests.e2e.test_main import ROOT
from tests.e2e.test_user_errors import _one_error_line, no_model_load  # noqa: F401 (fixture)

TINY = ["-c", str(ROOT / "configs/tiny.yaml"), "--model.policy.model=tiny:tiny",
        "--model.sampling.max_new_tokens=8", "--model.sampling.val_group_size=0",
        "--model.policy.max_pixels=3136", "--data.max_pixels=3136", "--data.min_pixels=784",
        "--data.batch_size=2", "--trainer.enable_progress_bar=false"]
# Multiple choice: (question, choices, reference, what the model answers, correct?)
MC = [("Which colour?", ["red", "blue", "green"], "B", "B", True),  # the letter
      ("Which shape?", ["circle", "square"], "square", "square", True),  # the option's text
      ("How many?", ["2", "3", "4"], "A", "3", False),  # another option's text
      ("Which animal?", ["cat", "dog"], "cat", "(A)", True)]  # the letter, for a text reference


def _plain(n: int) -> list[dict]:
    return [{"image": png_bytes((28, 28), (40 * i, 0, 0)), "question": f"Is it {i}?",
             "answer": str(i)} for i in range(n)]


def _multiple_choice() -> list[dict]:
    return [{"image": png_bytes((28, 28)), "question": q, "choices": c, "answer": ref}
            for q, c, ref, _, _ in MC]


@pytest.fixture
def scripted_answers(monkeypatch):
    """The random tiny model never answers: greedy completions answer as ``MC`` says."""
    said = {q: answer for q, _, _, answer, _ in MC}
    real = evaluation.generate_greedy

    def greedy(model, processor, images, questions, args, ids=None):
        rollout = real(model, processor, images, questions, args, ids=ids)
        parsed = [Parsed("", (), said[q.split("\n")[0]], True) for q in rollout.questions]
        return replace(rollout, parsed=parsed)
    monkeypatch.setattr(evaluation, "generate_greedy", greedy)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "saved"])
def test_fit_validate_and_predict_on_a_table(tmp_path, monkeypatch, scripted_answers, fmt):
    monkeypatch.chdir(tmp_path)
    name = "{}.parquet" if fmt == "parquet" else "{}"
    plain = write_table(tmp_path / name.format("train"), _plain(5))
    choices = write_table(tmp_path / name.format("mc"), _multiple_choice())
    cli = main(["fit", *TINY, f"--data.train={plain}", f"--data.val={choices}",
                "--trainer.fast_dev_run=1"])
    assert cli.trainer.global_step == 1 and cli.datamodule.read >= 2 + 2

    cli = main(["validate", *TINY, f"--data.val={choices}", "--data.batch_size=4"])
    assert float(cli.trainer.callback_metrics["val/accuracy"]) == 0.75  # 3 of 4, as MC says

    cli = main(["predict", *TINY, f"--data.predict={choices}"])
    writer = next(c for c in cli.trainer.callbacks if isinstance(c, PredictionWriter))
    rows = [json.loads(line) for line in writer.written.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [correct for *_, correct in MC]
    assert [r["source"] for r in rows] == [f"{choices}:{i}" for i in range(4)]
    assert rows[0]["question"] == ("Which colour?\nA. red\nB. blue\nC. green\n"
                                   "Answer with the option's letter.")
    assert [r["answer"] for r in rows] == ["B", "B", "A", "A"]  # references as letters


@pytest.mark.slow
def test_a_table_with_other_column_names_trains_once_they_are_mapped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"picture": r["image"], "prompt": r["question"], "label": r["answer"]}
            for r in _plain(4)]
    path = write_table(tmp_path / "d.parquet", rows, image_column="picture")
    cli = main(["fit", *TINY, f"--data.train={path}", "--data.val=null", "--trainer.max_steps=2",
                "--data.columns.image=picture", "--data.columns.question=prompt",
                "--data.columns.answer=label"])
    assert cli.trainer.global_step == 2 and not any(cli.datamodule.skipped.values())


def test_a_missing_column_is_one_error_line_before_the_model_loads(tmp_path, capsys,
                                                                   no_model_load):  # noqa: F811
    path = write_table(tmp_path / "d.parquet", [{"image": png_bytes(), "prompt": "q"}])
    line = _one_error_line(capsys, f"--data.train={path}")
    assert line == (f"error: data.train: {path} has no column 'question' "
                    "(data.columns.question); its columns: image, prompt. Set "
                    "data.columns.question to the one that holds the question")


@pytest.mark.slow
def test_training_on_a_jsonl_with_a_4000x10_image_skips_it_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png(tmp_path / "good.png", size=(28, 28))
    png(tmp_path / "banner.png", size=(4000, 10))  # aspect 400: Qwen's processor raises on it
    rows = [{"image": "good.png", "question": f"q{i}?"} for i in range(3)]
    path = write_jsonl(tmp_path / "d.jsonl", [*rows[:1], {"image": "banner.png",
                                                          "question": "q?"}, *rows[1:]])
    cli = main(["fit", *TINY, f"--data.train={path}", "--data.val=null", "--trainer.max_steps=2"])
    assert cli.trainer.global_step == 2
    assert cli.datamodule.skipped["bad_aspect"] == 1
