"""Deterministic local builder of a tiny Qwen2.5-VL: tokenizer, image-only processor, random weights.

The machines this project is developed and tested on cannot download weights, so tests and the CPU
default build a real ``Qwen2_5_VLForConditionalGeneration`` of a few million parameters here, with a
byte-level BPE tokenizer trained on a small fixed corpus and Qwen's special tokens and chat template.
Every code path (processor, generation, LoRA, 4-bit) is the one the real 3B/7B models take.

    python -m toyworld.tiny --size small --out DIR
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from srmcr.processor import ImageOnlyQwenProcessor
from srmcr.sources import DEFAULT_CACHE, build_atomically

TinySize = Literal["tiny", "small"]
BUILD_VERSION = 1  # bump when the builder's output changes, so stale caches are rebuilt

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL's chat template, trimmed to images and text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a an of in on to is are there how many what which colour color shape shapes image picture "
    "circle circles square squares triangle triangles red green blue yellow purple orange white black "
    "cyan pink grey gray brown left right above below top bottom middle center largest smallest big "
    "small only one two three four five six seven eight nine ten zero yes no and or not it this that "
    "I see count counted total number answer step think first then so therefore because each object "
    "objects located next side is are has have with than more less same different question reason "
    "look looking find found visible scene contains containing inside outside near far most least "
    "A B C D E option options choose correct wrong true false describe description final"
).split()


@dataclass(frozen=True)
class TinySpec:
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    mrope_section: tuple[int, int, int]  # sums to head_dim / 2
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vocab_size: int


SPECS: dict[str, TinySpec] = {
    "tiny": TinySpec(64, 2, 4, 2, 128, (2, 3, 3), 2, 32, 2, 1024),
    "small": TinySpec(256, 4, 4, 2, 512, (8, 12, 12), 2, 64, 2, 2048),
}


def _corpus() -> list[str]:
    lines = list(_WORDS)
    lines += [f"Step {i}: " for i in range(1, 17)] + [str(i) for i in range(100)]
    lines += ["<think>", "</think>", "<answer>", "</answer>", "\n", " ", ".", ",", ":", "?"]
    for a in _WORDS:  # word pairs give the merges for common phrases
        lines += [f"{a} {b}" for b in _WORDS[:40]]
    return lines


def build_tokenizer(vocab_size: int) -> Qwen2Tokenizer:
    """Train a byte-level BPE with Qwen's split regex, wrapped as a Qwen2Tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model = bpe.get_vocab()
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]  # training order
    tok = Qwen2Tokenizer(vocab=model, merges=merges, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>",
                         additional_special_tokens=SPECIAL_TOKENS[1:])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_processor(tokenizer: Qwen2Tokenizer) -> ImageOnlyQwenProcessor:
    # Pixel caps small enough for CPU: a 112x112 image is 8x8 patches -> 16 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=224 * 224)
    return ImageOnlyQwenProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  chat_template=CHAT_TEMPLATE)


def build_config(spec: TinySpec, tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // 64) * 64
    text = dict(
        vocab_size=vocab, hidden_size=spec.text_hidden, intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": list(spec.mrope_section)},
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision_depth, hidden_size=spec.vision_hidden, num_heads=spec.vision_heads,
        intermediate_size=2 * spec.vision_hidden, out_hidden_size=spec.text_hidden,
        fullatt_block_indexes=[spec.vision_depth - 1], window_size=112,
    )
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def build(size: TinySize, out: Path, seed: int = 0) -> Path:
    """Write model, tokenizer and processor of ``size`` to ``out`` (deterministic for a seed)."""
    if size not in SPECS:
        raise ValueError(f"unknown tiny size {size!r}; choose one of {sorted(SPECS)}")
    spec = SPECS[size]
    tokenizer = build_tokenizer(spec.vocab_size)
    config = build_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    return out


def cached(size: TinySize, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The folder of ``tiny:<size>``, built once; concurrent builders race safely by rename."""
    final = cache_dir / f"tiny-{size}-v{BUILD_VERSION}"
    if not (final / "config.json").exists():
        build_atomically(final, lambda tmp: build(size, tmp))
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SPECS), default="small")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.size, args.out, args.seed)
    n = sum(f.stat().st_size for f in path.iterdir())
    print(f"wrote tiny Qwen2.5-VL ({args.size}) to {path} ({n / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
