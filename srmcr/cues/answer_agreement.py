"""Answer agreement (MM-UPT, Wei et al., 2025): does the answer agree with its group's majority?

score = 1 when the completion's normalized answer equals the most frequent normalized answer of
its group, 0 otherwise, and 0 without an answer: a missing answer is disagreement, never neutral
(an abstention takes its group's mean, which would let a completion without an answer out-score
one that answered against the majority). Answers are compared after
``srmcr.answers.normalize`` (lower case, no punctuation or articles, number words as digits,
plurals folded), so "Three circles." and "3 circle" agree. Completions without an answer do not
vote. Ties: among the most frequent answers, the one that appears first in the group
wins (deterministic, independent of the order of other groups). A group where every completion
gives the same answer scores 1 everywhere: agreement alone cannot tell them apart, and the
group-normalized reward gives them z = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.answers import normalize
from srmcr.cues.base import Cue
from srmcr.parsing import parse

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout


def answer_key(answer: str | None) -> str | None:
    """The form answers are compared in; None when there is no answer (or nothing survives
    normalization, e.g. "?")."""
    if answer is None:
        return None
    return normalize(answer) or None


def group_votes(keys: Sequence[str | None],
                group_size: int) -> tuple[Tensor, Tensor, Tensor]:  # (B, G) x 3
    """Per completion: an id of its key (-1 = no answer), whether it has one, and how many
    completions of its group (itself included) give the same key (0 without an answer)."""
    n = len(keys)
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} answers do not split into groups of {group_size}")
    index: dict[str, int] = {}
    ids = torch.tensor([-1 if k is None else index.setdefault(k, len(index)) for k in keys],
                       dtype=torch.long).view(-1, group_size)
    valid = ids >= 0
    same = (ids[:, :, None] == ids[:, None, :]) & valid[:, None, :] & valid[:, :, None]
    return ids, valid, same.sum(-1)


def majority_agreement(keys: Sequence[str | None], group_size: int) -> Tensor:  # (N,)
    """1 where a key equals its group's most frequent key (first in the group on ties), 0
    elsewhere, None (no answer) included."""
    ids, valid, count = group_votes(keys, group_size)
    votes = count.masked_fill(~valid, -1)  # (B, G): count of each completion's answer
    first_top = votes.argmax(-1, keepdim=True)  # torch returns the FIRST maximal index
    agree = (ids == ids.gather(1, first_top)) & valid
    return agree.float().view(-1)


def answer_agreement(completions: Sequence[str], group_size: int) -> Tensor:  # (N,)
    """Answer agreement of each completion with its group's majority; groups are ``group_size``
    consecutive completions."""
    return majority_agreement([answer_key(parse(c).answer) for c in completions], group_size)


class AnswerAgreement(Cue):
    """:func:`answer_agreement` of a rollout, and the running mean of its scores."""

    name = "answer_agreement"

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        keys = [answer_key(p.answer) for p in rollout.parsed]
        return majority_agreement(keys, rollout.group_size)


def support_share(keys: Sequence[str | None], group_size: int) -> Tensor:  # (N,)
    """Share of the OTHER completions of the group that give the same key; 0 where the key is
    None (no answer: never neutral); NaN (does not apply) when a group has one completion (the
    greedy evaluation), which training never has."""
    _, valid, count = group_votes(keys, group_size)
    if group_size == 1:
        return torch.full((len(keys),), float("nan"))
    return ((count - valid.long()) / (group_size - 1)).float().view(-1)


def answer_support(completions: Sequence[str], group_size: int) -> Tensor:  # (N,)
    """How many of the other completions of its group share each completion's answer."""
    return support_share([answer_key(parse(c).answer) for c in completions], group_size)


class AnswerSupport(Cue):
    """Vote share: a graded answer agreement. Where ``answer_agreement`` gives 1 to the
    majority and 0 to everyone else, this ranks every answer by its support, so a runner-up
    answer held by 3 of 8 ranks above a stray one (wrong answers scatter more than right ones).
    score = (completions of the group with the same normalized answer − 1) / (G − 1); 0 without
    an answer. A group that all agrees (or all differs) scores alike: z = 0."""

    name = "answer_support"

    def score(self, rollout: Rollout) -> Tensor:  # (N,)
        return support_share([answer_key(p.answer) for p in rollout.parsed], rollout.group_size)
