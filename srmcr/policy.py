"""Load the policy (Qwen2.5-VL + LoRA, optionally 4-/8-bit) and its processor.

A model spec is a hub id (``Qwen/Qwen2.5-VL-7B-Instruct``), a local folder, or a registered
``<kind>:<name>`` source (``srmcr.sources``; the toy world registers ``tiny:`` and ``warm:``).
The reference policy for the KL term is the same model with the LoRA adapter disabled, so no
second copy of the weights is ever loaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, Qwen2_5_VLForConditionalGeneration

from srmcr import sources
from srmcr.errors import ConfigError, MissingFileError, require
from srmcr.processor import ImageOnlyQwenProcessor

DType = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "4bit", "8bit"]
Attention = Literal["eager", "sdpa", "flash_attention_2"]
LANGUAGE_MODEL = r"model\.language_model\.layers\.\d+\.(?:self_attn|mlp)\."
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKEN_PIXELS = 28 * 28  # one image token: 2 x 2 patches of 14 x 14 pixels


@dataclass
class LoraArgs:
    """LoRA adapter on the language model only (the vision tower stays frozen)."""

    r: int = 16
    """Rank of the LoRA update."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA input (0 keeps the rollout and the loss pass on the same function)."""
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    """Projection names inside the language model's attention and MLP blocks."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.target_modules) - set(PROJECTIONS))
        require({
            f"policy.lora.r={self.r}: set it to 1 or more (the rank of the update)": self.r >= 1,
            f"policy.lora.alpha={self.alpha}: set it above 0 (the update is scaled by "
            "alpha / r)": self.alpha > 0,
            f"policy.lora.dropout={self.dropout}: set it to at least 0 and below 1":
                0 <= self.dropout < 1,
            f"policy.lora.target_modules is empty: name at least one of {', '.join(PROJECTIONS)}":
                bool(self.target_modules),
            f"policy.lora.target_modules: {', '.join(unknown)} is no projection of the language "
            f"model; use {', '.join(PROJECTIONS)}": not unknown,
        })

    def config(self) -> LoraConfig:
        # A regex, so the vision tower's own gate/up/down projections are never adapted.
        names = "|".join(sorted(set(self.target_modules)))
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=rf"{LANGUAGE_MODEL}(?:{names})", task_type="CAUSAL_LM")


@dataclass
class PolicyArgs:
    """Which model to load, at which precision, and how to adapt it."""

    model: str = "tiny:small"
    """Hub id, local folder, or a registered ``<kind>:<name>`` source built on this machine (the
    toy world's ``tiny:<tiny|small>``, random weights, and ``warm:<name>``, a tiny model after a
    supervised warm-up on its world's traces: ``warm:small`` (shipped), ``warm:small-v3``,
    ``warm:tally``; ``toyworld.recipes`` lists them)."""
    quantization: Quantization = "none"
    """Load the frozen base in 4-bit nf4 (QLoRA, double quantization) or 8-bit."""
    dtype: DType = "float32"
    """Weight / compute dtype (bfloat16 on GPUs that support it)."""
    attn_implementation: Attention = "sdpa"
    """Attention kernel."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 30% more compute."""
    min_pixels: int | None = None
    """Processor's lower bound on image area (None keeps the model's own)."""
    max_pixels: int | None = None
    """Processor's upper bound on image area; image tokens = pixels / 784."""
    lora: LoraArgs = field(default_factory=LoraArgs)

    def __post_init__(self) -> None:
        low, high = self.min_pixels, self.max_pixels
        require({
            f"policy.quantization={self.quantization!r}: set it to one of "
            f"{', '.join(get_args(Quantization))}": self.quantization in get_args(Quantization),
            f"policy.dtype={self.dtype!r}: set it to one of {', '.join(get_args(DType))}":
                self.dtype in get_args(DType),
            f"policy.attn_implementation={self.attn_implementation!r}: set it to one of "
            f"{', '.join(get_args(Attention))}": self.attn_implementation in get_args(Attention),
            f"policy.min_pixels={low}: set it to {TOKEN_PIXELS} (one image token, 28 x 28 pixels) "
            "or more, or null (the model's own)": low is None or low >= TOKEN_PIXELS,
            f"policy.max_pixels={high}: set it to {TOKEN_PIXELS} (one image token, 28 x 28 "
            "pixels) or more, or null (the model's own)": high is None or high >= TOKEN_PIXELS,
            f"policy.max_pixels={high} is below policy.min_pixels={low}: raise max_pixels or "
            "lower min_pixels": low is None or high is None or high >= low,
        })
        check_model_spec(self.model)
        if self.quantization != "none":
            check_bitsandbytes(self.quantization)


def check_model_spec(spec: str) -> None:
    """Fail fast, before anything loads, on a spec that cannot name a model."""
    kind = sources.spec_kind(spec)
    found = None if kind is None else sources.model_source(kind)
    if found is not None:
        _, _, name = spec.partition(":")
        if name not in found.names:
            raise ConfigError(f"policy.model {spec!r}: unknown {kind} model; use one of "
                              f"{', '.join(f'{kind}:{n}' for n in sorted(found.names))}")
        return
    if Path(spec).expanduser().is_dir():
        return
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        local = ", ".join(f"{k}:<name>" for k in sources.model_kinds())
        raise MissingFileError(f"policy.model {spec!r} is neither an existing folder nor a hub id "
                               f"('org/name')" + (f" nor a registered source ({local})"
                                                  if local else ""))


def resolve_model(spec: str, cache_dir: Path = sources.DEFAULT_CACHE) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts (building a registered
    ``<kind>:<name>`` source once)."""
    check_model_spec(spec)
    kind = sources.spec_kind(spec)
    found = None if kind is None else sources.model_source(kind)
    if found is not None:
        return str(found.build(spec.partition(":")[2], cache_dir))
    path = Path(spec).expanduser()
    return str(path) if path.is_dir() else spec


def check_bitsandbytes(quantization: str) -> None:
    """Quantize a small tensor where training will run; fail with what to change if it can't."""
    try:
        import bitsandbytes.functional as bnbf

        device = "cuda" if torch.cuda.is_available() else "cpu"
        weights = torch.randn(64, 64, device=device, dtype=torch.bfloat16)
        if quantization == "4bit":
            bnbf.quantize_4bit(weights, quant_type="nf4")
        else:
            bnbf.int8_vectorwise_quant(weights.half())
    except (ImportError, RuntimeError, NotImplementedError, AttributeError) as error:
        raise ConfigError(f"policy.quantization={quantization} needs bitsandbytes, which cannot "
                          f"run here ({type(error).__name__}: {error}); set "
                          "policy.quantization=none") from error


def _quantization_config(args: PolicyArgs) -> BitsAndBytesConfig | None:
    if args.quantization == "none":
        return None
    # Full module-name prefixes: transformers 5 matches llm_int8_skip_modules by prefix.
    skip = ["model.visual", "lm_head"]
    if args.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, args.dtype),
                              llm_int8_skip_modules=skip)


def load_processor(args: PolicyArgs, path: str) -> ImageOnlyQwenProcessor:
    processor = ImageOnlyQwenProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"  # not saved with the tokenizer (NOTES.md)
    ip = processor.image_processor  # Qwen's image processor keeps the pixel caps in `size`
    ip.size = {"shortest_edge": args.min_pixels or ip.size["shortest_edge"],
               "longest_edge": args.max_pixels or ip.size["longest_edge"]}
    return processor


@contextmanager
def peft_on_transformers_5() -> Iterator[None]:
    """PEFT 0.21 still reads transformers' names for activation checkpointing, which transformers
    5 deprecates (``is_gradient_checkpointing``, ``gradient_checkpointing_enable``): their
    FutureWarnings inside PEFT are nothing a user can act on."""
    with warnings.catch_warnings():
        for name in ("is_gradient_checkpointing", "gradient_checkpointing_enable"):
            warnings.filterwarnings("ignore", message=f"`{name}` is deprecated",
                                    category=FutureWarning)
        yield


def load_policy(args: PolicyArgs) -> tuple[PeftModel, ImageOnlyQwenProcessor]:
    """The LoRA-wrapped model (trainable adapter only) and its processor."""
    path = resolve_model(args.model)
    quant = _quantization_config(args)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, dtype=getattr(torch, args.dtype), attn_implementation=args.attn_implementation,
        quantization_config=quant)
    if quant is not None:
        # On CPUs with AVX512-BF16, bitsandbytes repacks a Linear4bit into an inference-only
        # layout on its first eval forward (sampling); later training forwards then bypass
        # autograd and fail ("a view of a leaf Variable ... in-place"). Keep the trainable layout.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        with peft_on_transformers_5():
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=args.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif args.gradient_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # PEFT: frozen embeddings must still pass gradients
    if args.gradient_checkpointing:
        # transformers and PEFT make the output of every input embedding require grad, the vision
        # tower's patch embedding too: the frozen tower (no adapter there) then kept activations
        # for backward and back-propagated through all its blocks for nothing.
        model.model.visual.forward = torch.no_grad()(model.model.visual.forward)
    model.config.use_cache = True  # generation wants the KV cache; training passes use_cache=False
    with peft_on_transformers_5():
        peft_model = get_peft_model(model, args.lora.config())
    return peft_model, load_processor(args, path)
