"""Self-verification (LaSeR-style, 2025): how sure is the policy that its own answer is correct?

After each completion, a new user turn asks ``VERIFY_QUESTION`` and the assistant header opens
the reply; the score is p(Yes) / (p(Yes) + p(No)) of the next token, at T = 1:
sigmoid(logit_Yes − logit_No). No generation: one no-grad forward per micro-batch with the
rollout's own image and prompt, keeping only the last position's logits. A completion without an
answer (none, or an empty one) scores 0: nothing to verify, and a missing answer is never
neutral (an abstention would take its group's mean). "Yes" and "No" are
single tokens in Qwen's vocabulary; with another tokenizer, the first token of each is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from srmcr.cues.base import Cue

if TYPE_CHECKING:  # the rollout and policy modules import transformers: seconds
    from srmcr.policy_view import PolicyView
    from srmcr.rollout import Rollout

VERIFY_QUESTION = "Is the answer above correct? Answer Yes or No."
WORDS = ("Yes", "No")


def self_verification(yes_no_logits: Tensor, has_answer: Tensor) -> Tensor:  # (N, 2), (N,)
    """p(Yes) / (p(Yes) + p(No)) from the next-token logits (or log-probs) of "Yes" and "No";
    0 where ``has_answer`` is false."""
    p_yes = torch.sigmoid(yes_no_logits[:, 0].float() - yes_no_logits[:, 1].float())
    return p_yes.masked_fill(~has_answer.to(p_yes.device, torch.bool), 0.0)


class SelfVerification(Cue):
    """:func:`self_verification` of a rollout; asks the policy for the next-token logits of every
    completion in one batched (micro-batched) pass per step."""

    name = "self_verification"

    def score(self, rollout: Rollout, policy: PolicyView) -> Tensor:  # (N,)
        has_answer = torch.tensor([bool(p.answer) for p in rollout.parsed])  # "" is no answer
        if not has_answer.any():  # nothing to verify: skip the forward pass
            return torch.zeros(len(rollout))
        logits = policy.next_token_logits(rollout, VERIFY_QUESTION, WORDS)  # (N, 2)
        return self_verification(logits, has_answer)
