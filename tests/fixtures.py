"""Helpers shared by the model tests: the tiny policy, two images of different sizes, a rollout.

Plain functions, so each test module builds its own module-scoped copies (a test that changes
the adapter's weights never leaks into another module).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from srmcr.parsing import parse
from srmcr.policy import PolicyArgs, load_policy
from srmcr.rollout import Rollout, SamplingArgs, sample

QUESTIONS = ["How many red circles are there?", "What colour is the big square?"]
# 112x112 -> 8x8 patches -> 16 image tokens; 168x112 (w x h) -> 8x12 patches -> 24 image tokens.
GRIDS = [[1, 8, 8], [1, 8, 12]]
IMAGE_TOKENS = [16, 24]
# Integral mean colours, so the blank image's colour is exact: (100, 0, 50) and (0, 100, 100).
MEAN_COLOURS = [(100, 0, 50), (0, 100, 100)]


def two_images() -> list[Image.Image]:
    """Half/half images of different sizes (so prompts differ in length and need left padding)."""
    a = Image.new("RGB", (112, 112), (200, 0, 0))
    a.paste((0, 0, 100), (56, 0, 112, 112))
    b = Image.new("RGB", (168, 112), (0, 200, 0))
    b.paste((0, 0, 200), (0, 56, 168, 112))
    return [a, b]


def _bnb_4bit_problem() -> str | None:
    """Why a bitsandbytes nf4 layer cannot train here (skip reason), or None."""
    try:
        import bitsandbytes as bnb

        x = torch.randn(2, 64, requires_grad=True)
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
        layer(x).sum().backward()
    except Exception as err:  # any failure means "cannot test here"
        return f"bitsandbytes 4-bit does not run here: {type(err).__name__}: {err}"
    return None if x.grad is not None and torch.isfinite(x.grad).all() else "no finite grad"


needs_bnb_4bit = pytest.mark.skipif((reason := _bnb_4bit_problem()) is not None,
                                    reason=reason or "")


def tiny_policy(**kwargs):
    """``load_policy`` on ``tiny:tiny`` (cached under ~/.cache/srmcr after the first build)."""
    return load_policy(PolicyArgs(model="tiny:tiny", **kwargs))


@torch.no_grad()
def randomize_lora(model, seed: int = 0, scale: float = 0.1) -> None:
    """Non-zero lora_B, so the adapter changes the outputs (PEFT initialises it to zero)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.copy_(torch.randn(param.shape, generator=gen) * scale)


class _EndBonus:
    """Logits processor that makes <|im_end|> likelier, so some completions end early."""

    def __init__(self, end_id: int, bonus: float):
        self.end_id, self.bonus = end_id, bonus

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.end_id] += self.bonus
        return scores


def sample_with_logits(model, processor, args: SamplingArgs, temperature: float,
                       seed: int = 0, end_bonus: float = 0.0,
                       **sample_kwargs) -> tuple[Rollout, torch.Tensor]:
    """``rollout.sample`` on ``two_images()``, also returning generate's raw logits (N, T, V).

    The raw logits are those of the sampler's own forward (KV cache, decode-time positions), before
    any logits processor, temperature or token suppression: the reference the training forward
    must reproduce. ``end_bonus`` only changes which tokens get sampled, not the raw logits.
    ``sample_kwargs`` go to ``sample`` (``greedy``, ``share_prompt``).
    """
    chunks: list[torch.Tensor] = []
    generate = model.generate
    end_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def recording_generate(**kwargs):
        if end_bonus:
            # After the sampler's own processors, so they still see the unmodified logits.
            kwargs["logits_processor"] = [*kwargs.get("logits_processor", []),
                                          _EndBonus(end_id, end_bonus)]
        out = generate(**kwargs, output_logits=True, return_dict_in_generate=True)
        chunks.append(torch.stack(out.logits, dim=1))  # (n, steps, V)
        return out.sequences

    model.generate = recording_generate
    try:
        torch.manual_seed(seed)
        rollout = sample(model, processor, two_images(), QUESTIONS, args, temperature,
                         **sample_kwargs)
    finally:
        del model.generate  # back to the class's method
    width = rollout.completion_ids.shape[1]
    logits = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) for c in chunks])
    return rollout, logits.float()


def with_answers(generate, think: bool = True):
    """``generate`` (a sampler returning a Rollout) with an answer, 0, 1 or 2 by row, appended to
    every completion (``think``: the completion wrapped in <think></think> first). A random tiny
    model never writes <answer>, and every answer-reading cue scores an unanswered completion 0:
    with answers the rewards vary, and the cues that need an answer, and their passes, run."""
    def wrapped(*args, **kwargs):
        rollout = generate(*args, **kwargs)
        texts = [(f"<think>{t}</think>" if think else t) + f"<answer>{i % 3}</answer>"
                 for i, t in enumerate(rollout.texts)]
        return replace(rollout, texts=texts, parsed=[parse(t) for t in texts])
    return wrapped
