"""GPU memory of one SR-MCR step, by part, estimated from a config before anything is loaded.

    python -m tools.memory -c configs/tiny.yaml -c configs/qwen2_5_vl_7b_qlora.yaml --gpu-gb 22
    python -m tools.memory -c configs/tiny.yaml -- --model.policy.model=tiny:tiny

Peak = what lives through the step (weights, LoRA and its AdamW state, the reward's sentence
encoder) + the largest phase: generation (KV cache, prefill, vision tower), the no-grad log-prob
passes, the reward (sentence embeddings, answer votes), the loss pass (saved activations, LoRA
gradients, fp32 logits of the completion only), or the sampled validation (its groups' within-group
AUC pairs). What grows with the step's N = B * G rows (the rollout, the sampled tokens, the
embeddings) and with a group's G^2 pairs counts too (``tools.memory_rows``).
Tensors are counted at the width they have in this code base: QLoRA's
``prepare_model_for_kbit_training`` upcasts all that is not 4-bit to fp32 (residual stream and
bitsandbytes outputs too), PEFT keeps LoRA in fp32, and under autocast every adapted projection
saves its own bf16 copy of its input. ``benchmarks/memory_check.py`` checks the formulas against
measured peaks. Shape letters: N = B*G rows, P prompt and T completion tokens, S = P + T.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from tools.memory_model import (  # noqa: F401 (re-exported: the public API)
    ALLOCATOR_SLACK,
    CUDA_CONTEXT_BYTES,
    ENCODER_BYTES,
    GB,
    GROUPS,
    INT8_BYTES,
    KNOBS,
    NF4_BYTES,
    NF4_MATRIX_BYTES,
    PATCH_PIXELS,
    QUESTION_FILLER,
    QWEN2_5_VL,
    MemoryPlan,
    ModelDims,
    Phase,
    StepSettings,
    Widths,
    checkpointed_loss_pass,
    decoder_linear_params,
    generation_phase,
    head_copy_bytes,
    kv_cache_bytes,
    layer_activation_bytes,
    logits_bytes,
    lora_params,
    merged_weight_bytes,
    no_grad_layer_bytes,
    other_params,
    pixel_bytes,
    plan,
    projection_shapes,
    reward_phase,
    shared_layer_bytes,
    shared_prompts,
    validation_phase,
    vision_bytes,
    vision_params,
    weight_bytes,
    widths,
)


def largest_fitting(s: StepSettings, knob: str, budget: float) -> int | None:
    """The largest value of ``knob`` (the others fixed) whose plan fits ``budget`` bytes."""
    step = 4 * PATCH_PIXELS if knob == "max_pixels" else 1
    low = 2 if knob in ("group_size", "val_group_size") else 1
    fits = lambda v: plan(replace(s, **{knob: v * step})).device_bytes <= budget  # noqa: E731
    lo, hi = low, getattr(s, knob) // step
    if hi < lo or not fits(lo):
        return None
    while lo < hi:  # memory grows with every knob: bisect
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo * step


# ---- configs ---------------------------------------------------------------------------------
def _merge(into: dict, overlay: dict) -> dict:
    """jsonargparse's rule: nested dicts merge; a new ``class_path`` replaces the whole value."""
    for key, value in overlay.items():
        old = into.get(key)
        if isinstance(value, dict) and isinstance(old, dict) \
                and value.get("class_path", old.get("class_path")) == old.get("class_path"):
            _merge(old, value)
        else:
            into[key] = value
    return into


def _init_args(section: dict) -> dict:
    """``{class_path, init_args: {...}}`` or plain ``{...}`` -> the arguments."""
    return {**section.get("init_args", {}),
            **{k: v for k, v in section.items() if k not in ("class_path", "init_args")}}


def load_config(paths: list[Path], overrides: list[str] = ()) -> dict:
    """The YAMLs merged in order (later files win, as with repeated ``-c``), then dotted
    ``--model.sampling.group_size=8`` overrides, as LightningCLI applies them."""
    import yaml

    config: dict = {}
    for path in paths:
        _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: write it as --section.key=value")
        *parents, leaf = key.split(".")
        _merge(config, _nested(parents, {leaf: yaml.safe_load(value)}))
    return config


def _nested(keys: list[str], leaf: dict) -> dict:
    return leaf if not keys else {keys[0]: _nested(keys[1:], leaf)}


def model_dims(spec: str) -> tuple[ModelDims, str | None]:
    """Dimensions of a model spec, and a local folder with its tokenizer if there is one."""
    if spec in QWEN2_5_VL:
        return QWEN2_5_VL[spec], None
    from srmcr import sources
    from srmcr.policy import resolve_model

    kind = sources.spec_kind(spec)
    found = None if kind is None else sources.model_source(kind)
    if found is not None and found.architecture is not None:  # the same config.json, cheaper
        spec = found.architecture(spec.partition(":")[2])
    path = Path(resolve_model(spec))
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no config.json for {spec!r}: give a local model folder, "
                                f"tiny:<tiny|small>, or one of {sorted(QWEN2_5_VL)}")
    config = json.loads((path / "config.json").read_text())
    text, vision = config.get("text_config", config), config["vision_config"]
    dims = ModelDims(text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"],
                     text["num_key_value_heads"], text["intermediate_size"], text["vocab_size"],
                     bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings"))),
                     vision["depth"], vision["hidden_size"], vision["intermediate_size"])
    return dims, str(path)


def prompt_text_tokens(system_prompt: str, question_chars: int, tokenizer: str | None) -> int:
    """Tokens of the rendered prompt without the image: exact with a local tokenizer, else about
    4 characters per token plus the chat template's 20 tokens."""
    question = (QUESTION_FILLER * (question_chars // len(QUESTION_FILLER) + 1))[:question_chars]
    if tokenizer is None:
        return (len(system_prompt) + question_chars) // 4 + 20
    from srmcr import prompts
    from srmcr.processor import ImageOnlyQwenProcessor

    processor = ImageOnlyQwenProcessor.from_pretrained(tokenizer)
    text = prompts.render(processor, [question], system_prompt)[0]
    return len(processor.tokenizer(text)["input_ids"]) - 1  # the image placeholder


def settings_from_config(config: dict, question_chars: int = 200) -> StepSettings:
    """``StepSettings`` of a merged config, with the project's own defaults and checks."""
    from srmcr.cues import CUE_NAMES, CUES
    from srmcr.module import GRPOArgs
    from srmcr.policy import LoraArgs, PolicyArgs
    from srmcr.rollout import SamplingArgs

    model, data = _init_args(config.get("model") or {}), _init_args(config.get("data") or {})
    raw = dict(model.get("policy", {}))
    policy = PolicyArgs(**{**raw, "lora": LoraArgs(**raw.get("lora", {}))})
    sampling = SamplingArgs(**model.get("sampling", {}))
    micro = GRPOArgs(**model.get("grpo", {})).micro_batch_size
    reward = (model.get("reward") or {}).get("init_args", {})
    cues = reward.get("cues", CUE_NAMES)
    optimizer = model.get("optimizer") or "AdamW"
    optimizer = optimizer if isinstance(optimizer, str) else optimizer.get("class_path", "AdamW")
    dims, tokenizer = model_dims(policy.model)
    # ImageQuestionDataModule's defaults (tests/test_memory.py keeps them in step).
    pixels = [v for v in (policy.max_pixels, data.get("max_pixels", 448 * 448)) if v]
    val_group_size = sampling.val_group_size if sampling.val_group_size is not None \
        else sampling.group_size
    return StepSettings(
        dims=dims, quantization=policy.quantization,
        dtype_bytes={"float32": 4, "bfloat16": 2, "float16": 2}[policy.dtype],
        autocast=str(config.get("trainer", {}).get("precision", "32-true")).endswith("-mixed"),
        checkpointing=policy.gradient_checkpointing, attention=policy.attn_implementation,
        lora_r=policy.lora.r, lora_targets=tuple(policy.lora.target_modules),
        optimizer_states=2 if "Adam" in optimizer else 1, batch_size=data.get("batch_size", 4),
        group_size=sampling.group_size, max_new_tokens=sampling.max_new_tokens,
        generation_batch_size=sampling.generation_batch_size,
        merge_lora=sampling.merge_lora, micro_batch_size=micro,
        max_pixels=min(pixels),
        prompt_text_tokens=prompt_text_tokens(sampling.system_prompt, question_chars, tokenizer),
        encoder=any(CUES[c].uses_encoder for c in cues), answer_votes="answer_agreement" in cues,
        val_group_size=val_group_size if data.get("val") else 0)


# ---- report ----------------------------------------------------------------------------------
def table(p: MemoryPlan, gpu_gb: float | None = None) -> str:
    unit, scale = ("GB", GB) if p.peak_bytes > 0.5 * GB else ("MiB", 2**20)
    line = lambda name, value: f"  {name:<50}{value / scale:>10.3f} {unit}"  # noqa: E731
    s = p.settings
    weights = {"none": f"{8 * s.dtype_bytes}-bit", "4bit": "nf4 (double quant) + fp32 rest",
               "8bit": "int8 + fp32 rest"}[s.quantization]
    lines = [f"weights {weights}, autocast {s.autocast}, checkpointing {s.checkpointing}, LoRA "
             f"r={s.lora_r}; B={s.batch_size} x G={s.group_size}; prompt {s.prompt_tokens} "
             f"tokens ({s.image_tokens} image), completion <= {s.max_new_tokens}; generate "
             f"{s.generation_batch_size}, micro-batch {s.micro_batch_size} rows",
             "", "resident through the step"]
    lines += [line(k, v) for k, v in p.resident.items()]
    for name, phase in p.phases.items():
        peak = "  <- peak" if name == p.peak_phase else ""
        lines.append(f"{name}: {phase.bytes / scale:.3f} {unit} on top{peak}")
        lines += [line(k, v) for k, v in phase.held.items()]
        lines += [line(f"{k} *", v) for k, v in phase.transient.items()]
    lines += ["  (* one at a time: the largest counts)", "",
              line("peak allocated (resident + peak phase)", p.peak_bytes),
              line(f"+ {ALLOCATOR_SLACK:.0%} allocator slack + CUDA context", p.device_bytes)]
    if gpu_gb is not None:
        verdict = "fits" if p.device_bytes <= gpu_gb * GB else "does NOT fit"
        lines.append(f"  {'GPU budget':<50}{gpu_gb * GB / scale:>10.3f} {unit}  -> {verdict}")
    return "\n".join(lines)


def advice(s: StepSettings, gpu_gb: float) -> str:
    lines = [f"largest value that fits {gpu_gb} GB, one knob at a time (others as configured):"]
    for knob in KNOBS:
        value = largest_fitting(s, knob, gpu_gb * GB)
        lines.append(f"  {knob:<24}{'no value: not this knob' if value is None else value}"
                     f"{'' if value is None else f'  (now {getattr(s, knob)})'}")
    if unmerged_fits(s, gpu_gb * GB):
        lines.append(f"  {'merge_lora':<24}false  (now true: decoding keeps merged weight copies)")
    return "\n".join(lines)


def unmerged_fits(s: StepSettings, budget: float) -> bool:
    """Whether decoding without the merged adapter copies (``sampling.merge_lora=false``) would
    fit ``budget`` bytes where the configured plan does not."""
    return merged_weight_bytes(s) > 0 and plan(replace(s, merge_lora=False)).device_bytes <= budget


# ---- refusing a config that cannot fit, before anything loads --------------------------------
log = logging.getLogger(__name__)
KNOB_KEYS = {"micro_batch_size": "model.grpo.micro_batch_size",
             "generation_batch_size": "model.sampling.generation_batch_size",
             "group_size": "model.sampling.group_size",
             "val_group_size": "model.sampling.val_group_size",
             "max_new_tokens": "model.sampling.max_new_tokens",
             "max_pixels": "model.policy.max_pixels"}


def machine_budget(accelerator: str) -> tuple[float, str]:
    """Bytes one rank trains in, and what they are: the GPU's memory when training runs on CUDA
    (``trainer.accelerator`` gpu, cuda or auto, with a GPU), else the machine's RAM."""
    import torch

    if str(accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(torch.cuda.current_device())
        return float(gpu.total_memory), f"the GPU's {gpu.total_memory / GB:.1f} GB ({gpu.name})"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return float(ram), f"this machine's {ram / GB:.1f} GB of RAM"


def check_fits(config: dict, budget: float, where: str) -> MemoryPlan | None:
    """The plan of a parsed config (``main.py fit``), or a ``ConfigError`` naming its figure,
    the budget and the largest value of each knob that fits; None when the model's dimensions
    are not known here (a hub model neither in ``QWEN2_5_VL`` nor downloaded). A config that
    fits only without decoding's merged adapter copies gets that plan (``settings.merge_lora``
    false), with a warning: the caller turns merging off."""
    from srmcr.errors import ConfigError

    try:
        settings = settings_from_config(config)
    except FileNotFoundError:
        return None
    result = plan(settings)
    if result.device_bytes <= budget:
        return result
    unmerged = plan(replace(settings, merge_lora=False)) if merged_weight_bytes(settings) else None
    if unmerged is not None and unmerged.device_bytes <= budget:  # fits, not its faster decoding
        log.warning("warning: model.sampling.merge_lora is off for this run: decoding's merged "
                    "weight copies (%.1f GB) would not fit %s (%.1f GB planned with them, %.1f "
                    "without); set it to false to silence this", merged_weight_bytes(settings) / GB,
                    where, result.device_bytes / GB, unmerged.device_bytes / GB)
        return unmerged
    fits = [f"{KNOB_KEYS[k]} to {v}" for k in KNOBS
            if (v := largest_fitting(settings, k, budget)) is not None]
    instead = f"set {' or '.join(fits)}" if fits else "use a smaller model or quantize it"
    raise ConfigError(
        f"this config's memory plan needs {result.device_bytes / GB:.1f} GB (peak in the "
        f"{result.peak_phase} phase), more than {where}: {instead}, or lower data.batch_size "
        "(python -m tools.memory -c <config> shows every part)")


def main(argv: list[str] | None = None) -> MemoryPlan:
    parser = argparse.ArgumentParser(prog="python -m tools.memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, action="append", required=True,
                        help="a YAML; repeat for overlays, merged in order")
    parser.add_argument("--gpu-gb", type=float, help="GPU memory to check against")
    parser.add_argument("--question-chars", type=int, default=200, help="assumed question length")
    parser.add_argument("overrides", nargs="*", help="LightningCLI-style overrides, after --")
    args = parser.parse_args(argv)
    settings = settings_from_config(load_config(args.config, args.overrides), args.question_chars)
    result = plan(settings)
    print(table(result, args.gpu_gb))
    if args.gpu_gb is not None and result.device_bytes > args.gpu_gb * GB:
        print(advice(settings, args.gpu_gb))
    return result


if __name__ == "__main__":
    main()
