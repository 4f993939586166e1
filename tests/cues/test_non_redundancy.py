"""non_redundancy = distinct word-trigram ratio × (1 − share of step pairs with cos > 0.9)."""

import pytest
import torch

from srmcr.cues.non_redundancy import NonRedundancy, non_redundancy, trigram_ratio
from tests.cues.fakes import make_rollout

CASES = [
    ("<think>Step 1: alpha beta gamma.\nStep 2: delta epsilon zeta.</think>", 1.0,
     "varied: 4/4 distinct trigrams, no similar steps"),
    ("<think>Step 1: the sky is blue.\nStep 2: the sky is blue.\nStep 3: the sky is blue.</think>",
     0.0, "looping: 4/10 trigrams, all 3 step pairs duplicates"),
    ("<think>Step 1: alpha beta gamma.\nStep 2: alpha beta gamma.\nStep 3: delta epsilon zeta."
     "</think>", 6 / 7 * 2 / 3, "one repeated step: 6/7 trigrams, 1 of 3 pairs duplicate"),
    ("<think>go go go go</think>", 0.5, "one step: 1 distinct of 2 trigrams, no pairs"),
    ("<think>hello there</think>", 0.0, "fewer than 3 words scores 0"),
    ("<think></think><answer>yes</answer>", 0.0, "empty reasoning scores 0"),
]


@pytest.mark.parametrize(("completion", "expected", "reason"), CASES, ids=[c[2] for c in CASES])
def test_values(fake, completion, expected, reason):
    assert non_redundancy(["q"], [completion], fake).item() == pytest.approx(expected, abs=1e-6)


RATIOS = [
    ("a b c a b c", 3 / 4, "abc, bca, cab, abc: 3 distinct of 4"),
    ("A, b; C. a B c", 3 / 4, "case and punctuation ignored"),
    ("one two", 0.0, "two words: no trigram"),
]


@pytest.mark.parametrize(("text", "expected", "reason"), RATIOS, ids=[r[2] for r in RATIOS])
def test_trigram_ratio(text, expected, reason):
    assert trigram_ratio(text) == pytest.approx(expected)


def test_looping_scores_lower_than_varied_with_minilm(minilm):
    varied = ("<think>Step 1: There are two red circles at the top.\nStep 2: A blue square sits "
              "below them.\nStep 3: So the image holds three shapes.</think><answer>3</answer>")
    looping = ("<think>Step 1: There are two red circles at the top.\nStep 2: There are two red "
               "circles at the top.\nStep 3: There are two red circles at the top.</think>"
               "<answer>3</answer>")
    good, bad = non_redundancy(["How many shapes?"] * 2, [varied, looping], minilm)
    assert good > bad


def test_unicode_and_long_text_stay_in_range(minilm):
    long = "<think>" + "".join(f"Step {i}: the circle number {i} is red.\n" for i in range(400))
    odd = "<think>Step 1: 一个 红色的 圆 🔴.\nStep 2: Δ ≈ 3·π über alles.</think><answer>🔴</answer>"
    s = non_redundancy(["q", "q"], [long + "</think>", odd], minilm)
    assert ((s >= 0) & (s <= 1)).all()


def test_metric_update_over_batches_equals_function(fake):
    cs = [c[0] for c in CASES]
    metric = NonRedundancy(encoder=fake)
    first = metric.score(make_rollout(["q"] * 3, cs[:3]))
    second = metric.score(make_rollout(["q"] * 3, cs[3:]))
    metric.update(first)
    metric.update(second)
    expected = non_redundancy(["q"] * 6, cs, fake)
    torch.testing.assert_close(torch.cat([first, second]), expected, rtol=0, atol=0,
                               equal_nan=True)  # score() is the pure function
    assert metric.compute().item() == pytest.approx(expected.mean().item())
