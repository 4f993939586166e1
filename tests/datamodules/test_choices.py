"""Multiple-choice records: options listed in the prompt, answers matched by letter or text."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from datamodules.image_question import ImageQuestionDataModule
from datamodules.records import REASONS, DecodeArgs, JsonlSource
from srmcr.answers import Choice, is_correct
from srmcr.prompts import with_choices
from tests.datamodules.helpers import good_row, write_jsonl
from tests.datamodules.test_image_question import take

COLOURS = ["red", "dark red", "blue"]


def test_the_prompt_lists_lettered_options_after_the_question():
    assert with_choices("Which colour is the square? ", ["red", "blue"]) == (
        "Which colour is the square?\nA. red\nB. blue\nAnswer with the option's letter.")


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(b)", "B"), ("C.", "C"), ("dark red", "B"), ("Blue", "C"), (" red ", "A")])
def test_the_reference_is_the_letter_of_a_letter_or_an_options_text(tmp_path, answer, letter):
    example = _decode(tmp_path, {"choices": COLOURS, "answer": answer})
    assert isinstance(example.answer, Choice) and example.answer == letter
    assert example.answer.options == tuple(COLOURS)
    assert example.question == "What is 0?\nA. red\nB. dark red\nC. blue\n" \
                               "Answer with the option's letter."


def _decode(tmp_path: Path, extra: dict, **args):
    from tests.datamodules.helpers import png
    png(tmp_path / "good.png", size=(28, 28))
    source = JsonlSource(write_jsonl(tmp_path / "d.jsonl", [good_row(0, **extra)]))
    (label, raw), = source.raws()
    return source.decode(label, raw, DecodeArgs(1, 10**6, args.get("chars", 2000)))


@pytest.mark.parametrize("extra, why", [
    ({"choices": COLOURS, "answer": "green"}, "answer names no option"),
    ({"choices": COLOURS, "answer": "D"}, "a letter past the last option"),
    ({"choices": "red, blue"}, "a string, not a list"),
    ({"choices": ["red", ""]}, "an empty option"),
    ({"choices": ["red", None]}, "a null option"),
    ({"choices": [str(i) for i in range(27)]}, "more options than letters"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_choices_are_a_counted_reason(tmp_path: Path, extra, why):
    from datamodules.records import BadRecord
    with pytest.raises(BadRecord) as error:
        _decode(tmp_path, extra)
    assert error.value.reason == "bad_choices"


def test_no_choices_or_an_empty_list_leave_the_question_alone(tmp_path: Path):
    assert _decode(tmp_path, {"choices": []}).question == "What is 0?"
    assert _decode(tmp_path, {"choices": None}).answer == "0"
    assert _decode(tmp_path, {"choices": [1, 2.5], "answer": 1}).answer == "A"  # numbers: text


def test_the_listed_options_count_towards_max_question_chars(tmp_path: Path):
    from datamodules.records import BadRecord
    with pytest.raises(BadRecord, match="long_question"):
        _decode(tmp_path, {"choices": ["x" * 30, "y"]}, chars=40)


B_OF_COLOURS = Choice("B", COLOURS)  # "dark red"
MATCHES = [  # (model answer, correct?, why)
    ("B", True, "the letter"),
    ("(B)", True, "the letter in brackets"),
    ("b", True, "a lower-case letter alone"),
    ("Option B", True, "option + letter"),
    ("The answer is B", True, "answer is + letter"),
    ("B. dark red", True, "letter and text"),
    ("dark red", True, "the option's text"),
    ("Dark red.", True, "the text, other case and punctuation"),
    ("red", False, "another option whose text is inside the right one"),
    ("A", False, "another letter"),
    ("B or C", False, "two letters"),
    ("blue", False, "another option's text"),
    ("dark red or blue", False, "hedging between texts"),
    ("A dark red", True, "an article, not option A"),
    ("", False, "no answer"),
]


@pytest.mark.parametrize("answer, correct, why", MATCHES, ids=[m[2] for m in MATCHES])
def test_a_choice_matches_its_letter_or_its_options_text(answer, correct, why):
    assert is_correct(answer, B_OF_COLOURS) is correct


def test_letters_run_to_the_last_option():
    many = Choice("G", [f"option {i}" for i in range(8)])
    assert is_correct("G", many) and is_correct("(g)", many) and not is_correct("F", many)


def test_a_choice_survives_pickling_and_json():
    import json
    again = pickle.loads(pickle.dumps(B_OF_COLOURS))
    assert isinstance(again, Choice) and again == "B" and again.options == tuple(COLOURS)
    assert json.dumps({"answer": B_OF_COLOURS}) == '{"answer": "B"}'


def test_choices_reach_the_batch_through_workers(tmp_path: Path):
    from tests.datamodules.helpers import png
    png(tmp_path / "good.png", size=(28, 28))
    rows = [good_row(i, choices=["yes", "no"], answer="no") for i in range(4)]
    dm = ImageQuestionDataModule(val=str(write_jsonl(tmp_path / "d.jsonl", rows)), batch_size=2,
                                 num_workers=2, min_pixels=1)
    answers = [a for b in take(dm, "val") for a in b.answers]
    assert all(isinstance(a, Choice) and a == "B" and a.options == ("yes", "no") for a in answers)
    assert len(answers) == 4 and not any(dm.skipped[r] for r in REASONS)
