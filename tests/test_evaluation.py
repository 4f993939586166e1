"""Greedy evaluation: the decoding, the tallies, the prediction rows, and validate / test / predict
through main.py on the tiny model (a checkpoint's adapter restored)."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from main import main
from srmcr.evaluation import (
    EvalMetrics,
    correctness,
    eval_log_dict,
    generate_greedy,
    prediction_records,
)
from srmcr.logprobs import completion_logits
from srmcr.rollout import SamplingArgs
from tests.cues.fakes import make_rollout
from tests.fixtures import QUESTIONS, randomize_lora, tiny_policy, two_images

ROOT = Path(__file__).resolve().parents[1]
# The FAST pattern of tests/e2e/test_main.py, plus tiny held-out sources with answers.
FAST = ["-c", str(ROOT / "configs/tiny.yaml"), "--model.policy.model=tiny:tiny",
        "--model.sampling.max_new_tokens=8", "--data.train=shapes:train?n=16&size=56",
        "--data.val=shapes:val?n=4&size=56", "--data.test=shapes:test?n=4&size=56",
        "--data.predict=shapes:test?n=3&size=56", "--data.batch_size=2",
        "--model.policy.max_pixels=3136", "--data.max_pixels=3136", "--data.min_pixels=784",
        "--trainer.logger.init_args.save_dir=logs"]


# ---------------------------------------------------------------- greedy decoding


def test_greedy_is_deterministic_argmax_with_one_completion_per_prompt():
    model, processor = tiny_policy()
    randomize_lora(model)
    args = SamplingArgs(group_size=2, max_new_tokens=10, generation_batch_size=1)
    torch.manual_seed(0)
    first = generate_greedy(model, processor, two_images(), QUESTIONS, args, ids=["a", "b"])
    torch.manual_seed(1)  # greedy: the seed changes nothing
    second = generate_greedy(model, processor, two_images(), QUESTIONS, args)
    assert first.group_size == 1 and len(first) == 2 and first.ids == ["a", "b"]
    assert first.temperature == 1.0 and model.training  # the train/eval flag is restored
    assert torch.equal(first.completion_ids, second.completion_ids)
    assert first.texts == second.texts
    # Every kept token is the argmax of the model's own logits over the tokens it may emit.
    with torch.no_grad():
        logits = completion_logits(model, first, slice(None))  # (N, T, V)
    tokenizer = processor.tokenizer
    allowed = torch.full((logits.shape[-1],), float("-inf"))
    allowed[:len(tokenizer)] = 0.0
    allowed[[i for i in tokenizer.all_special_ids
             if tokenizer.convert_ids_to_tokens(i) not in ("<|im_end|>", "<|endoftext|>")]] = -1e9
    best = (logits + allowed).argmax(-1)
    keep = first.completion_mask.bool()
    assert torch.equal(best[keep], first.completion_ids[keep])


# ---------------------------------------------------------------- tallies and rows

TEXTS = ["<think>Step 1: count them all.</think><answer>three</answer>",  # correct, well formed
         "<think>Step 1: count.</think><answer>4</answer>",  # wrong, well formed
         "yes there is",  # no answer block: wrong, not well formed
         "<answer>red</answer>"]  # no reference: excluded from accuracy
REFERENCES = ["3", "3", "yes", None]


def test_correctness_excludes_records_without_a_reference():
    answers = [make_rollout(["q"] * 4, TEXTS).parsed[i].answer for i in range(4)]
    assert correctness(answers, REFERENCES) == [True, False, False, None]


def test_eval_metrics_by_hand_and_over_batches():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    rollout = replace(make_rollout(["q"] * 4, TEXTS, mask=mask),
                      truncated=torch.tensor([False, False, True, False]))
    whole = EvalMetrics()
    whole.update(rollout, REFERENCES)
    got = {k: float(v) for k, v in whole.compute().items()}
    assert got == {"accuracy": 1 / 3, "format_rate": 2 / 4, "completion_len": 10 / 4,
                   "truncated": 1 / 4, "labeled": 3.0, "unlabeled": 1.0}
    parts = EvalMetrics()
    for rows in (slice(0, 1), slice(1, 4)):
        part = replace(make_rollout(["q"] * len(TEXTS[rows]), TEXTS[rows], mask=mask[rows]),
                       truncated=rollout.truncated[rows])
        parts.update(part, REFERENCES[rows])
    assert {k: float(v) for k, v in parts.compute().items()} == got


def test_eval_log_dict_prefixes_and_leaves_out_undefined_values():
    stats = {"accuracy": torch.tensor(float("nan")), "format_rate": torch.tensor(0.5)}
    cues = {"step_consistency": torch.tensor(float("nan")), "non_redundancy": torch.tensor(0.25)}
    assert eval_log_dict("test", stats, cues) == {"test/format_rate": 0.5,
                                                  "test/reward/non_redundancy": 0.25}


def test_prediction_records_schema_and_abstentions():
    rollout = replace(make_rollout(["q0", "q1", "q2", "q3"], TEXTS), ids=["r0", "r1", "r2", "r3"])
    scores = torch.tensor([[0.5, float("nan")]] * 4)
    rows = prediction_records(rollout, scores, ["a_cue", "b_cue"], REFERENCES,
                              [f"src:{i}" for i in range(4)])
    assert rows[0] == {"id": "r0", "source": "src:0", "question": "q0", "answer": "3",
                       "completion": TEXTS[0], "steps": ["count them all."],
                       "parsed_answer": "three", "well_formed": True, "correct": True,
                       "completion_len": 4, "truncated": False,
                       "scores": {"a_cue": 0.5, "b_cue": None}}
    assert rows[3]["correct"] is None and rows[2]["parsed_answer"] is None
    json.dumps(rows, allow_nan=False)  # strict JSON: no NaN anywhere


# ---------------------------------------------------------------- through main.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-step fit of the tiny config, validating after every step (val inside fit)."""
    root = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli = main(["fit", *FAST, "--trainer.max_steps=2", "--trainer.val_check_interval=1"])
    metrics = cli.trainer.callback_metrics
    for key in ["val/accuracy", "val/format_rate", "val/completion_len", "val/labeled",
                "val/reward/visual_grounding", "val/reward/non_redundancy"]:
        assert key in metrics, key
    assert float(metrics["val/labeled"]) == 4.0  # all shapes records carry answers
    path = root / "fit.ckpt"
    cli.trainer.save_checkpoint(path)  # through on_save_checkpoint: adapter and reward state
    return path


@pytest.mark.slow
def test_validate_restores_the_checkpoint_adapter(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    cli = main(["validate", *FAST, f"--ckpt_path={checkpoint}"])
    state = cli.model.state_dict()
    lora_b = [k for k in saved if "lora_B" in k]
    assert lora_b and any(saved[k].abs().sum() > 0 for k in lora_b)  # trained, not the init
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["val/accuracy"]) <= 1.0
    assert float(metrics["val/completion_len"]) <= 8


@pytest.mark.slow
def test_test_and_predict_write_metrics_and_jsonl(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["test", *FAST, f"--ckpt_path={checkpoint}"])
    assert {"test/accuracy", "test/format_rate", "test/reward/semantic_alignment"} <= set(
        cli.trainer.callback_metrics)
    cli = main(["predict", *FAST, f"--ckpt_path={checkpoint}"])
    path = Path(cli.trainer.log_dir) / "predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3
    names = list(cli.model.reward.names)
    for row in rows:
        assert set(row) == {"id", "source", "question", "answer", "completion", "steps",
                            "parsed_answer", "well_formed", "correct", "completion_len",
                            "truncated", "scores"}
        assert list(row["scores"]) == names and "visual_grounding" in names
        vg = row["scores"]["visual_grounding"]
        assert vg is None or 0.0 <= vg <= 1.0 and not math.isnan(vg)
        assert isinstance(row["correct"], bool)  # shapes records all have an answer
