"""The output-format contract: a completion -> reasoning, steps, answer, well_formed.

The model is asked for ``<think>Step 1: ...\nStep 2: ...</think><answer>...</answer>``. Parsing
never raises: malformed text still yields its reasoning (the text before ``<answer>``, or all of
it) so that the cues can score it, and ``well_formed`` says whether the format was kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_STEPS = 16
MIN_STEP_WORDS = 3

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_WELL_FORMED = re.compile(r"\s*<think>(?:(?!</?think>|</?answer>).)*</think>\s*"
                          r"<answer>(?:(?!</?think>|</?answer>).)*</answer>\s*", re.DOTALL)
_STEP_MARKER = re.compile(r"(?<!\S)Step\s*\d+\s*[:.)]\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TAG = re.compile(r"</?(?:think|answer)>")


@dataclass(frozen=True)
class Parsed:
    reasoning: str  # the reasoning text, step markers and tags removed
    steps: tuple[str, ...]  # at most MAX_STEPS, markers stripped
    answer: str | None  # text inside the first <answer> block, stripped; None if absent or empty
    well_formed: bool  # exactly one think block followed by exactly one NON-EMPTY answer block


def parse(text: str) -> Parsed:
    """Parse one completion (docs/design.md, "Output format")."""
    think = _THINK.findall(text)
    answers = _ANSWER.findall(text)
    answer = (answers[0].strip() or None) if answers else None  # "<answer></answer>": none
    well_formed = (len(think) == 1 and len(answers) == 1 and answer is not None
                   and _WELL_FORMED.fullmatch(text) is not None)
    if think:
        raw = think[0]
    else:
        cut = text.find("<answer>")
        raw = text if cut < 0 else text[:cut]
    raw = _TAG.sub(" ", raw)
    steps = split_steps(raw)
    return Parsed(" ".join(steps), tuple(steps), answer, well_formed)


def split_steps(reasoning: str) -> list[str]:
    """Split on ``Step k:`` markers, else newlines, else sentences; merge short fragments."""
    if _STEP_MARKER.search(reasoning):
        pieces = _STEP_MARKER.split(reasoning)
    elif "\n" in reasoning.strip():
        pieces = reasoning.split("\n")
    else:
        pieces = _SENTENCE_END.split(reasoning)
    steps: list[str] = []
    for piece in (" ".join(p.split()) for p in pieces):
        if not piece:
            continue
        if steps and len(piece.split()) < MIN_STEP_WORDS:
            steps[-1] = f"{steps[-1]} {piece}"
        else:
            steps.append(piece)
    if len(steps) > MAX_STEPS:
        steps = steps[: MAX_STEPS - 1] + [" ".join(steps[MAX_STEPS - 1:])]
    return steps
