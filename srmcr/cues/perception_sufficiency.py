"""Perception sufficiency (label-free Vision-SR1, Li et al., 2025): does the reasoning carry
enough of the image to answer without it?

The same policy reads the completion's reasoning (the text of its steps) and the question, with
NO image, and answers greedily in a few tokens; score = 1 when that blind answer matches the
completion's own answer, 0 otherwise; NaN (abstain) when the completion has no answer. Answers
match when their ``answer_key`` (``srmcr.answers.normalize``) is equal, as in answer agreement.
Vision-SR1 compares the blind answer with a ground truth; without labels, the completion's own
answer stands in. A reasoning that states the answer outright also passes: the cue rewards
reasoning that is self-contained, not perception in particular.

One batched generation per step, for the completions with an answer only (``PolicyView``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.cues.answer_agreement import answer_key
from srmcr.cues.base import Cue
from srmcr.parsing import parse

if TYPE_CHECKING:  # the rollout and policy modules import transformers: seconds
    from srmcr.policy_view import PolicyView
    from srmcr.rollout import Rollout

SYSTEM_PROMPT = (
    "You cannot see the image. Answer the question using only the description of the image "
    "given below. Give the final answer, a word or a number, inside <answer></answer>."
)
ANSWER_TOKENS = 16  # the blind answer is a word or a number: short greedy decoding


def blind_prompt(question: str, reasoning: str) -> str:
    """The text-only user turn: the completion's reasoning, then the question."""
    return f"Description: {reasoning}\n\nQuestion: {question}"


def blind_answer(reply: str) -> str:
    """The answer in a blind reply: inside <answer></answer> if present, else the whole reply."""
    answer = parse(reply).answer
    return reply.strip() if answer is None else answer


def perception_sufficiency(answers: Sequence[str | None],
                           blind_answers: Sequence[str | None]) -> Tensor:  # (N,)
    """1 where the blind answer matches the completion's own answer, 0 where it does not (or is
    missing), and 0 where the completion has no answer (never neutral)."""
    if len(answers) != len(blind_answers):
        raise ValueError(f"{len(answers)} answers for {len(blind_answers)} blind answers")
    own = [answer_key(a) for a in answers]
    return torch.tensor([0.0 if o is None else float(o == answer_key(b))
                         for o, b in zip(own, blind_answers)])


class PerceptionSufficiency(Cue):
    """:func:`perception_sufficiency` of a rollout; asks the policy for the blind answers, in one
    batched call per step."""

    name = "perception_sufficiency"

    def score(self, rollout: Rollout, policy: PolicyView) -> Tensor:  # (N,)
        answers = [p.answer for p in rollout.parsed]
        rows = [i for i, a in enumerate(answers) if answer_key(a) is not None]
        blind: list[str | None] = [None] * len(answers)
        if rows:  # completions without an answer score 0: no need to ask about them
            replies = policy.generate_without_image(
                [blind_prompt(rollout.questions[i], rollout.parsed[i].reasoning) for i in rows],
                SYSTEM_PROMPT, ANSWER_TOKENS)
            for i, reply in zip(rows, replies):
                blind[i] = blind_answer(reply)
        return perception_sufficiency(answers, blind)
