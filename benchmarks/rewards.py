"""Control rewards for experiments, as reward functions named in a run's config: never defaults.

An oracle (trained on labels: the ceiling a label-free reward is compared with), a random
reward (no signal at all: what the rest of the recipe does on its own, e.g. through the KL
term, the format gate or the temperature schedule) and brevity (a reward any policy can climb by
writing fewer steps: does the optimizer move the policy toward what it is rewarded for?):

    python main.py fit -c configs/tiny.yaml --model.reward.cues=[] \\
        --model.reward.functions='[{path: benchmarks.rewards:oracle, uses_labels: true}]'
    python main.py fit -c configs/tiny.yaml --model.reward.cues=[] \\
        --model.reward.functions='[{path: benchmarks.rewards:random_reward}]'
    python main.py fit -c configs/tiny.yaml --model.reward.cues=[] \
        --model.reward.functions='[{path: benchmarks.rewards:brevity}]'

Both keep the signature of ``srmcr.reward_functions``: ``fn(prompts, completions, **fields)``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from srmcr.answers import is_correct
from srmcr.parsing import parse


def oracle(prompts: Sequence[str], completions: Sequence[str],
           answer: Sequence[str | None], **fields) -> list[float | None]:
    """1 where the completion's answer matches its record's label (``srmcr.answers.is_correct``),
    else 0; None (abstain) where the record has no label. Needs ``uses_labels: true``: the run
    then trains on labels."""
    return [None if label is None else float(is_correct(parse(text).answer, label))
            for text, label in zip(completions, answer, strict=True)]


def random_reward(prompts: Sequence[str], completions: Sequence[str], **fields) -> list[float]:
    """1 or 0 with probability ½ each, independent of the completion. Drawn from Python's
    ``random``, whose state the training checkpoints keep, so a resumed run draws the same."""
    return [float(random.random() < 0.5) for _ in completions]


def brevity(prompts: Sequence[str], completions: Sequence[str], **fields) -> list[float]:
    """Minus the number of reasoning steps: the fewer, the better, whatever the answer. A
    positive control for the optimizer: a policy trained on it should write fewer steps within
    tens of updates (``train/completion_len`` falls); if it does not, the update is broken."""
    return [-float(len(parse(text).steps)) for text in completions]
