"""The system prompt and chat messages that ask for
``<think>Step k: ...</think><answer>...</answer>``."""

from __future__ import annotations

from collections.abc import Sequence

SYSTEM_PROMPT = (
    "Look at the image and answer the question. First reason step by step inside "
    "<think></think>, one step per line written as 'Step 1: ...', 'Step 2: ...'; then give the "
    "final answer, a word or a number, inside <answer></answer>."
)
# For the locally built tiny models (configs/tiny.yaml, warm:<size>): the same format in 20 tokens
# instead of 60. A prompt token costs every pass; the tiny models learn the format from examples.
TINY_SYSTEM_PROMPT = "Reason in <think>Step 1: ...</think>, answer in <answer></answer>."


def messages(question: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """Chat messages for one image-question pair (the image comes first, as Qwen2.5-VL expects)."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]


def render(processor, questions: Sequence[str], system_prompt: str = SYSTEM_PROMPT) -> list[str]:
    """Prompt strings ending with the assistant header, one image placeholder each."""
    return [processor.apply_chat_template(messages(q, system_prompt), tokenize=False,
                                          add_generation_prompt=True) for q in questions]


OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHOICES_INSTRUCTION = "Answer with the option's letter."


def with_choices(question: str, options: Sequence[str]) -> str:
    """A multiple-choice question as the model sees it: the question, one line per option
    (``A. <option>``, ``B. <option>``, ...), then ``CHOICES_INSTRUCTION``."""
    lines = [f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options, strict=False)]
    return "\n".join([question.rstrip(), *lines, CHOICES_INSTRUCTION])
