"""semantic_alignment = ½·cos⁺(E(q),E(r)) + ½·cos⁺(E(s_K),E(a)); no answer: second term 0."""

import math

import pytest
import torch

from srmcr.cues.semantic_alignment import SemanticAlignment, semantic_alignment
from tests.cues.fakes import make_rollout

Q = "alpha beta"
# With the bag-of-words fake, cos = word overlap / (|x|·|y|)^½: values are exact.
CASES = [
    ("<think>alpha beta</think><answer>alpha beta</answer>", 1.0, "all aligned"),
    ("<think>alpha beta</think><answer>gamma delta</answer>", 0.5, "answer unrelated to reasoning"),
    ("<think>alpha beta</think>", 0.5, "missing answer: the answer term is 0, not dropped"),
    ("<think>alpha beta</think><answer></answer>", 0.5, "empty answer counts as missing"),
    ("<think>alpha gamma</think>", 0.25, "reasoning shares half the question, no answer"),
    ("<think>gamma delta</think><answer>gamma</answer>", 1 / (2 * math.sqrt(2)),
     "reasoning ignores question, answer half of last step"),
    ("<think></think><answer>alpha beta</answer>", 0.0, "empty reasoning scores 0"),
    ("", 0.0, "empty completion scores 0"),
]


@pytest.mark.parametrize(("completion", "expected", "reason"), CASES, ids=[c[2] for c in CASES])
def test_values(fake, completion, expected, reason):
    assert semantic_alignment([Q], [completion], fake).item() == pytest.approx(expected, abs=1e-6)


ANSWERED = [  # removing or emptying the answer never raises the score (no loophole)
    "<think>Step 1: alpha beta gamma.</think><answer>delta</answer>",
    "<think>Step 1: alpha beta.\nStep 2: so it is gamma.</think><answer>gamma</answer>",
    "<think>Step 1: alpha.</think><answer>no</answer>",
]


@pytest.mark.parametrize("completion", ANSWERED)
def test_removing_the_answer_never_raises_the_score(fake, completion):
    think = completion[:completion.index("<answer>")]
    got = semantic_alignment([Q] * 3, [completion, think, think + "<answer></answer>"], fake)
    assert got[0] >= got[1] and got[0] >= got[2]


def test_unrelated_answer_scores_lower_with_minilm(minilm):
    q = "How many red circles are in the picture?"
    think = "<think>Step 1: I look for red circles.\nStep 2: I count three red circles.</think>"
    good, bad = semantic_alignment([q, q], [think + "<answer>three red circles</answer>",
                                            think + "<answer>Paris is in France</answer>"], minilm)
    assert good > bad


def test_unicode_and_long_text_stay_in_range(minilm):
    long = "<think>" + "the circle is red and round. " * 400 + "</think><answer>red</answer>"
    odd = "<think>Ein roter Kreis 🔴, 一个红色的圆。\nΔ ≈ 3·π</think><answer>🔴</answer>"
    s = semantic_alignment(["Welche Farbe? 什么颜色?"] * 2, [long, odd], minilm)
    assert ((s >= 0) & (s <= 1)).all()


def test_metric_update_over_batches_equals_function(fake):
    qs = [Q, "gamma", Q, "delta"]
    cs = [c[0] for c in CASES[:4]]
    metric = SemanticAlignment(encoder=fake)
    first = metric.score(make_rollout(qs[:2], cs[:2]))
    second = metric.score(make_rollout(qs[2:], cs[2:]))
    metric.update(first)
    metric.update(second)
    expected = semantic_alignment(qs, cs, fake)
    torch.testing.assert_close(torch.cat([first, second]), expected, rtol=0, atol=0,
                               equal_nan=True)  # score() is the pure function
    assert metric.compute().item() == pytest.approx(expected.mean().item())
