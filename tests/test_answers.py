"""Answer matching, one case per line with the reason (the validation accuracy rests on it)."""

import pytest

from srmcr.answers import answer_kind, is_correct, normalize

CASES = [
    # (model answer, reference, correct, reason)
    ("3", "3", True, "identical"),
    ("three", "3", True, "number word up to twenty"),
    ("Twenty", "20", True, "number word, any case"),
    ("3", "three", True, "a word reference is a number too"),
    ("The answer is 3 circles", "3", True, "surrounding words around the only number"),
    ("There are 3.", "3", True, "trailing punctuation"),
    ("3.0", "3", True, "numbers compare by value"),
    ("1,000", "1000", True, "thousands separator"),
    ("none", "0", True, "'none' counts as zero"),
    ("4", "3", False, "a different number"),
    ("3 or 4", "3", False, "hedging between numbers is wrong"),
    ("I see 2 red and 3 blue", "3", False, "two distinct numbers: not a single answer"),
    ("thirty", "3", False, "'thirty' is not 'three'"),
    ("Yes.", "yes", True, "yes with punctuation"),
    ("yes, there is", "yes", True, "yes with surrounding words"),
    ("YES", "Yes", True, "case"),
    ("Yeah", "yes", True, "yes variant"),
    ("There is no red circle.", "no", True, "a 'no' inside a sentence"),
    ("Nope", "no", True, "no variant"),
    ("No.", "yes", False, "wrong polarity"),
    ("yes and no", "yes", False, "both polarities"),
    ("There is a red circle", "yes", False, "no yes/no word: not an answer to a yes/no question"),
    ("B", "B", True, "bare letter"),
    ("(B)", "B", True, "letter in parentheses"),
    ("B.", "B", True, "letter with a full stop"),
    ("Option B", "B", True, "'Option B'"),
    ("option b", "(B)", True, "case of letter and reference form"),
    ("The answer is B", "B", True, "'answer is' before the letter"),
    ("B. red", "B", True, "letter then the option's text"),
    ("b", "B", True, "a lower-case letter alone"),
    ("C", "B", False, "another letter"),
    ("(A) or (B)", "B", False, "two letters"),
    ("A circle", "A", False, "the article 'A' is not option A"),
    ("red", "red", True, "identical text"),
    ("Red.", "red", True, "case and punctuation"),
    ("The answer is red", "red", True, "surrounding words"),
    ("It is a red one", "red", True, "articles and surrounding words"),
    ("circles", "circle", True, "plural folded"),
    ("the blue square", "blue square", True, "multi-word reference inside the answer"),
    ("not red", "red", False, "negated"),
    ("red or blue", "red", False, "hedging with 'or'"),
    ("reddish", "red", False, "whole words only"),
    ("blue", "red", False, "a different word"),
    ("square blue", "blue square", False, "multi-word reference out of order"),
    (None, "red", False, "no answer given"),
    ("", "3", False, "empty answer"),
    ("   ", "yes", False, "blank answer"),
]


@pytest.mark.parametrize(("answer", "reference", "correct", "reason"), CASES,
                         ids=[c[3] for c in CASES])
def test_is_correct(answer, reference, correct, reason):
    assert is_correct(answer, reference) is correct, reason


@pytest.mark.parametrize(("reference", "kind"), [
    ("3", "number"), ("three", "number"), ("yes", "yes_no"), ("No", "yes_no"),
    ("B", "option"), ("(c)", "option"), ("Option D", "option"), ("red", "text"),
    ("blue square", "text"), ("3 circles", "text"),
])
def test_answer_kind(reference, kind):
    assert answer_kind(reference) == kind


def test_normalize():
    assert normalize("The Boxes, and AN apple's three circles!") == "box and apple 3 circle"
