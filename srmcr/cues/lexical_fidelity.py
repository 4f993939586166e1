"""Lexical fidelity: does the reasoning use the question's terms and contain the answer's?

C(q) = the question's content tokens: lower-cased words of >= 3 letters minus ``STOP_WORDS``,
plus numbers (``12``, ``3.5``), as a set. A(a) = the answer's terms: its words of ANY length
minus stop words and articles, or all its words if nothing else is left, so that "no", "2" and
"B" count like "yes" (dropping words under 3 letters would make "no" vanish and score higher
than "yes"). W(r) = every word of the reasoning.

score = ½·|C(q)∩W(r)|/|C(q)| + ½·|A(a)∩W(r)|/|A(a)|. Without an answer (absent, empty, or no
word) the answer term is 0, never dropped, so removing the answer never raises the score; a
question without content tokens leaves the answer term alone. Empty reasoning scores 0. Never
abstains. No encoder: the ``encoder`` argument exists for the shared signature.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.cues.base import Cue, run_text_cue
from srmcr.encoder import TextEncoder
from srmcr.parsing import Parsed

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout

# English function words of >= 3 letters (shorter words never count): the NLTK list, with its
# contraction stems ("don", "isn"), plus quantifiers and connectives that questions and
# reasoning share without sharing content ("how many ...", "therefore ...").
STOP_WORDS = frozenset("""
about above after again against ain all and any are aren because been before being below
between both but can could couldn did didn does doesn doing don down during each few for from
further had hadn has hasn have haven having hence her here hers herself him himself his how
however into isn its itself just many might mightn more most much must mustn myself needn nor
not now off once only other our ours ourselves out over own same shall shan she should shouldn
some such than that the their theirs them themselves then there therefore these they this those
through thus too under until very was wasn were weren what when where which while who whom why
will with won would wouldn you your yours yourself yourselves also
""".split())

# Numbers first so that "3.5" stays one token; words are runs of letters (any script).
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")


_ARTICLES = frozenset({"a", "an", "the"})


def content_tokens(text: str) -> set[str]:
    """C(text): the question's content tokens (words of >= 3 letters, no stop words; numbers)."""
    return {t for t in _TOKEN.findall(text.lower())
            if t[0].isdigit() or (len(t) >= 3 and t not in STOP_WORDS)}


def answer_terms(answer: str | None) -> set[str]:
    """A(answer): its words of any length minus stop words and articles, else all its words."""
    words = set(_TOKEN.findall((answer or "").lower()))
    return (words - STOP_WORDS - _ARTICLES) or words


def lexical_fidelity(questions: Sequence[str], completions: Sequence[str],
                     encoder: TextEncoder | None = None) -> Tensor:  # (N,)
    """Lexical fidelity of each completion to its question and its own answer."""
    return run_text_cue(_score, questions, completions, encoder)


def _one(question: str, parsed: Parsed) -> float:
    if not parsed.steps:
        return 0.0
    reasoning = set(_TOKEN.findall(parsed.reasoning.lower()))
    answer = answer_terms(parsed.answer)
    answer_term = len(answer & reasoning) / len(answer) if answer else 0.0
    asked = content_tokens(question)
    if not asked:
        return answer_term
    return 0.5 * len(asked & reasoning) / len(asked) + 0.5 * answer_term


def _score(questions: Sequence[str], parsed: Sequence[Parsed],
           encoder: TextEncoder | None = None) -> Tensor:  # (N,)
    device = encoder.device if encoder is not None else None
    return torch.tensor([_one(q, p) for q, p in zip(questions, parsed)],
                        dtype=torch.float32, device=device)


class LexicalFidelity(Cue):
    """:func:`lexical_fidelity` of a rollout, and the running mean of its scores."""

    name = "lexical_fidelity"

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        return _score(rollout.questions, rollout.parsed)
