"""Answer matching for the validation metrics: a model's answer text vs a short reference.

References are short (``"3"``, ``"yes"``, ``"red"``, ``"B"``); answers are whatever the model
wrote inside ``<answer>``. The reference decides how to compare (``answer_kind``):

- ``number``: the answer's distinct numbers (digits, or words up to "twenty"; "none" is 0) must
  be exactly the reference's: "The answer is 3 circles" matches "3", "3 or 4" does not.
- ``yes_no``: the polarities of the answer's yes/no words ("yes", "yeah", "true", "no", "nope",
  "false", ...) must be exactly the reference's: "Yes, there is" matches "yes", "yes and no"
  does not.
- ``option``: the option letters A-E the answer names ("B", "(B)", "B.", "Option B", "answer is
  B") must be exactly the reference's. A capital letter counts alone only at the start, so the
  article in "A circle" is not option A.
  A multiple-choice record's reference is a ``Choice``: its letter, with the options the prompt
  listed (``srmcr.prompts.with_choices``); letters then run to the last option's, and an answer
  that names no letter matches by text: it must name the correct option's text and no other's
  (an exact option text wins over one contained in it: "dark red" is not "red").
- ``text``: after normalization (lower case, no punctuation, no articles, simple plurals
  folded), the reference must occur in the answer as whole words, not right after "not"/"no",
  and the answer must not hedge with "or" ("red or blue").

No answer (None, or empty) is never correct. Matching is lenient about form and strict about
content: it should not reward a model for listing candidates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Literal

from srmcr.prompts import OPTION_LETTERS

AnswerKind = Literal["number", "yes_no", "option", "text"]

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())} | {"none": "0"}
# Not "right"/"correct": "no, that is not right" would read as both polarities.
POLARITY = {**dict.fromkeys(("yes", "yeah", "yep", "true"), "yes"),
            **dict.fromkeys(("no", "nope", "false"), "no")}
ARTICLES = frozenset({"a", "an", "the"})
NEGATIONS = frozenset({"not", "no", "never", "isnt", "arent"})

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"-?\d+(?:\.\d+)?|[^\W_]+")
# The reference alone is an option: "B", "(b)", "B.", "B)", "option B".
_OPTION_REFERENCE = re.compile(r"\(?([a-e])\)?[.):]?|(?:option|choice)\s*\(?([a-e])\)?",
                               re.IGNORECASE)


@cache
def _option_patterns(last: str) -> tuple[re.Pattern[str], ...]:
    """An option A..``last`` named inside an answer: "(B)", "option b", "answer is B", a letter
    alone, or a capital at the start followed by punctuation or "is" ("B. red", "B is right";
    not "A circle")."""
    upper, any_case = f"A-{last}", f"A-{last}a-{last.lower()}"
    return (
        re.compile(rf"\(([{any_case}])\)"),
        re.compile(rf"(?i:\b(?:option|choice))\s*:?\s*([{any_case}])\b"),
        re.compile(rf"(?i:\banswer(?:\s+is)?)\s*:?\s*([{upper}])\b"),
        re.compile(rf"^\s*([{any_case}])[.):]?\s*$"),
        re.compile(rf"^\s*([{upper}])(?:[.):,]|\s+is\b)"),
    )


class Choice(str):
    """The reference of a multiple-choice record: the correct option's letter (the string itself,
    "B") and the options in prompt order; ``is_correct`` accepts the letter or the option's text."""

    options: tuple[str, ...]

    def __new__(cls, letter: str, options: Sequence[str]) -> Choice:
        if not 0 <= OPTION_LETTERS.find(letter) < len(options):
            raise ValueError(f"{letter!r} is not one of the letters of {len(options)} options")
        choice = super().__new__(cls, letter)
        choice.options = tuple(options)
        return choice

    def __reduce__(self):  # DataLoader workers pickle batches
        return Choice, (str(self), self.options)


def words(text: str) -> list[str]:
    """Lower-cased words and numbers of ``text``: number words become digits, articles and
    punctuation go, apostrophes join ("isn't" -> "isnt"), "1,000" -> "1000"."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower().replace("'", "").replace("’", ""))
    out = [NUMBER_WORDS.get(w, w) for w in _WORD.findall(text)]
    return [w for w in out if w not in ARTICLES]


def normalize(text: str) -> str:
    """The canonical form used by text matching (see ``words``), plurals folded."""
    return " ".join(_singular(w) for w in words(text))


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]  # boxes -> box
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]  # circles -> circle, but not glass -> glas
    return word


def _numbers(text: str) -> set[float]:
    return {float(w) for w in words(text) if _NUMBER.fullmatch(w)}


def _polarities(text: str) -> set[str]:
    return {POLARITY[w] for w in words(text) if w in POLARITY}


def _option(reference: str) -> str | None:
    found = _OPTION_REFERENCE.fullmatch(reference.strip())
    return None if found is None else (found.group(1) or found.group(2)).upper()


def _options(answer: str, last: str = "E") -> set[str]:
    return {m.upper() for pattern in _option_patterns(last) for m in pattern.findall(answer)}


def _choice_match(answer: str, reference: Choice) -> bool:
    named = _options(answer, OPTION_LETTERS[len(reference.options) - 1])
    if named:
        return named == {str(reference)}
    said = normalize(answer)
    found = {i for i, option in enumerate(reference.options) if normalize(option) == said} or \
        {i for i, option in enumerate(reference.options) if _text_match(answer, option)}
    return found == {OPTION_LETTERS.index(reference)}


def answer_kind(reference: str) -> AnswerKind:
    """How ``reference`` is compared (module docstring)."""
    ref = words(reference)
    if len(ref) == 1 and _NUMBER.fullmatch(ref[0]):
        return "number"
    if len(ref) == 1 and ref[0] in POLARITY:
        return "yes_no"
    if _option(reference) is not None:
        return "option"
    return "text"


def _text_match(answer: str, reference: str) -> bool:
    ans, ref = normalize(answer).split(), normalize(reference).split()
    if not ref or "or" in ans:
        return False
    return any(ans[i:i + len(ref)] == ref and (i == 0 or ans[i - 1] not in NEGATIONS)
               for i in range(len(ans) - len(ref) + 1))


MATCHERS: dict[AnswerKind, Callable[[str, str], bool]] = {
    "number": lambda answer, ref: _numbers(answer) == _numbers(ref),
    "yes_no": lambda answer, ref: _polarities(answer) == _polarities(ref),
    "option": lambda answer, ref: _options(answer) == {_option(ref)},
    "text": _text_match,
}


def is_correct(answer: str | None, reference: str) -> bool:
    """Whether the model's ``answer`` (None: it gave none) matches ``reference``."""
    if answer is None or not answer.strip():
        return False
    if isinstance(reference, Choice):
        return _choice_match(answer, reference)
    return MATCHERS[answer_kind(reference)](answer, reference)
