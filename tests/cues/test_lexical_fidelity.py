"""lexical_fidelity = ½·|C(q)∩W(r)|/|C(q)| + ½·|A(a)∩W(r)|/|A(a)|; no answer: its term is 0."""


import pytest
import torch

from srmcr.cues.lexical_fidelity import (
    LexicalFidelity,
    content_tokens,
    lexical_fidelity,
)
from tests.cues.fakes import make_rollout

Q = "How many red circles are in the image?"  # C(q) = {red, circles, image}
CASES = [
    (Q, "<think>Step 1: I see red circles in the image.\nStep 2: There are 3 of them.</think>"
        "<answer>3</answer>", 1.0, "uses all question terms and contains the answer"),
    (Q, "<think>Step 1: I see blue squares.\nStep 2: There are 3 of them.</think>"
        "<answer>3</answer>",
     0.5, "ignores the question's terms: 0/3, answer 1/1"),
    (Q, "<think>I see red squares in the picture.</think><answer>4</answer>", 1 / 6,
     "1/3 of the question, answer absent from reasoning"),
    (Q, "<think>Red circles everywhere.</think>", 1 / 3, "missing answer: its term is 0"),
    (Q, "<think>Red circles everywhere.</think><answer></answer>", 1 / 3,
     "empty answer: its term is 0 (dropping it would score 2/3, above an answer)"),
    ("How many?", "<think>I count 3 of them.</think><answer>3</answer>", 1.0,
     "question without content tokens: answer term alone"),
    ("How many?", "<think>I count them all.</think>", 0.0,
     "no question terms and no answer: 0, never an abstention"),
    (Q, "<think></think><answer>3</answer>", 0.0, "empty reasoning scores 0"),
    (Q, "<answer>red circles</answer>", 0.0, "answer only: empty reasoning scores 0"),
    ("Is the circle red?", "<think>The circle looks red, so yes.</think><answer>yes</answer>", 1.0,
     "'yes' is a content token"),
    ("Is the circle red?", "<think>The circle looks red, so yes.</think><answer>no</answer>", 0.5,
     "'no' counts like 'yes' (dropped as a short word, it would score 1.0)"),
    ("Is the circle red?", "<think>The circle is not red, so no.</think><answer>no</answer>", 1.0,
     "'no' found in the reasoning"),
    (Q, "<think>I see red circles in the image: 2 of them.</think><answer>2</answer>", 1.0,
     "a single digit counts"),
    ("Which option is red?", "<think>Option B is red.</think><answer>B</answer>", 1.0,
     "a single option letter counts"),
    ("Which option is red?", "<think>Option B is red.</think><answer>A</answer>", 0.5,
     "a single letter that is an article elsewhere still counts as the answer"),
]


@pytest.mark.parametrize(("question", "completion", "expected", "reason"), CASES,
                         ids=[c[3] for c in CASES])
def test_values(question, completion, expected, reason):
    got = lexical_fidelity([question], [completion]).item()
    assert got == pytest.approx(expected, abs=1e-6, nan_ok=True)


TOKENS = [
    ("The 2 big RED cars, and 3.5 dogs!", {"big", "red", "cars", "dogs", "2", "3.5"},
     "lower-cased, stop-words out, numbers kept whole"),
    ("It is on a box of 7.", {"box", "7"}, "words under 3 letters dropped, final period kept out"),
    ("Ein roter Kreis: größer!", {"ein", "roter", "kreis", "größer"}, "letters of any script"),
]


@pytest.mark.parametrize(("text", "expected", "reason"), TOKENS, ids=[t[2] for t in TOKENS])
def test_content_tokens(text, expected, reason):
    assert content_tokens(text) == expected


@pytest.mark.parametrize(("question", "completion"), [(q, c) for q, c, *_ in CASES
                                                     if "<answer>" in c and "</think>" in c])
def test_removing_the_answer_never_raises_the_score(question, completion):
    think = completion[:completion.index("<answer>")]
    got = lexical_fidelity([question] * 3, [completion, think, think + "<answer></answer>"])
    assert got[0] >= got[1] and got[0] >= got[2]


def test_unicode_and_long_text_stay_in_range():
    long = "<think>" + "the red circle is round. " * 2000 + "</think><answer>red</answer>"
    odd = "<think>一个红色的圆 🔴 ≈ 3·π\u200b</think><answer>🔴</answer>"
    s = lexical_fidelity(["What colour is the circle?", "什么颜色?"], [long, odd])
    assert s[0] == 0.75  # "circle" of {colour, circle}, and the answer "red"
    assert 0 <= s[1] <= 1


def test_metric_update_over_batches_equals_function():
    qs, cs = [c[0] for c in CASES], [c[1] for c in CASES]
    metric = LexicalFidelity()
    first = metric.score(make_rollout(qs[:4], cs[:4]))
    second = metric.score(make_rollout(qs[4:], cs[4:]))
    metric.update(first)
    metric.update(second)
    expected = lexical_fidelity(qs, cs)
    torch.testing.assert_close(torch.cat([first, second]), expected, rtol=0, atol=0,
                               equal_nan=True)  # score() is the pure function
    assert metric.compute().item() == pytest.approx(expected.nanmean().item())
