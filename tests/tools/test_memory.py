"""The memory estimator: architecture counts against real models, activation formulas against
the tensors autograd really saves, config parsing, the fit search, and the memory-relevant
properties of the training path (checkpointing active with PEFT and 4-bit, no full-vocab logits)."""

from __future__ import annotations

import inspect
import itertools
import json
import re
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from srmcr.logprobs import completion_logits, token_logprobs
from srmcr.lora_forward import plain_lora
from srmcr.policy import LoraArgs, resolve_model
from srmcr.rollout import SamplingArgs, sample
from tests.fixtures import QUESTIONS, needs_bnb_4bit, tiny_policy, two_images
from tools import memory, memory_model, memory_rows

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- architecture and weights


@pytest.mark.parametrize("name", sorted(memory.QWEN2_5_VL))
def test_table_and_formulas_give_the_published_parameter_counts(name):
    d = memory.QWEN2_5_VL[name]
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=d.hidden, num_hidden_layers=d.layers,
                         num_attention_heads=d.heads, num_key_value_heads=d.kv_heads,
                         intermediate_size=d.intermediate, vocab_size=d.vocab),
        vision_config=dict(depth=d.vision_depth, hidden_size=d.vision_hidden, num_heads=16,
                           intermediate_size=d.vision_intermediate, out_hidden_size=d.hidden),
        tie_word_embeddings=d.tied)
    with torch.device("meta"):  # the real architecture, without allocating it
        model = Qwen2_5_VLForConditionalGeneration(config)
    total = memory.decoder_linear_params(d) + memory.vision_params(d) + memory.other_params(d)
    assert total == _params(model)
    assert total == {"Qwen/Qwen2.5-VL-3B-Instruct": 3_754_622_976,  # the hub's model cards
                     "Qwen/Qwen2.5-VL-7B-Instruct": 8_292_166_656}[name]


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_local_config_dims_count_the_built_model(size):
    dims, folder = memory.model_dims(f"tiny:{size}")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)
    total = (memory.decoder_linear_params(dims) + memory.vision_params(dims)
             + memory.other_params(dims))
    assert total == _params(model)
    assert memory.weight_bytes(dims, "none", 4) == 4 * total
    lora = tiny_policy(lora=LoraArgs(r=8, alpha=16))[0] if size == "tiny" else None
    if lora is not None:
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
        assert memory.lora_params(dims, 8, tuple(LoraArgs().target_modules)) == trainable


@needs_bnb_4bit
def test_4bit_weight_bytes_match_the_loaded_model():
    from benchmarks.memory_check import tensor_bytes

    model, _ = tiny_policy(quantization="4bit", lora=LoraArgs(r=8, alpha=16))
    dims, _ = memory.model_dims("tiny:tiny")
    lora = memory.lora_params(dims, 8, tuple(LoraArgs().target_modules)) * 4
    loaded = tensor_bytes(list(model.parameters()) + list(model.buffers()))
    # nf4 + double-quant constants for the projections; the rest upcast to fp32 by PEFT.
    assert memory.weight_bytes(dims, "4bit", 4) + lora == pytest.approx(loaded, rel=0.02)


# ---------------------------------------------------------------- activations


def _saved_bytes(model, rollout, autocast: bool) -> int:
    """Distinct storages autograd keeps for one loss forward (parameters excluded), counted at
    the end of the forward: what a graph saved and then dropped (no-grad vision checkpoints)
    is gone by then."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, tuple[int, weakref.ref]] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = (storage.nbytes(), weakref.ref(t))
        return t

    rows = slice(0, len(rollout))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp = token_logprobs(completion_logits(model, rollout, rows), rollout.completion_ids)
    alive = sum(n for n, ref in kept.values() if ref() is not None)
    (logp * rollout.completion_mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return alive


REGIMES = [  # (quantization, dtype, autocast): the CPU default, 3B bf16 LoRA, QLoRA
    pytest.param("none", "float32", False, id="fp32"),
    pytest.param("none", "bfloat16", True, id="bf16-autocast"),
    pytest.param("4bit", "bfloat16", True, id="4bit-autocast", marks=needs_bnb_4bit),
]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["all-layers", "checkpointing"])
@pytest.mark.parametrize(("quantization", "dtype", "autocast"), REGIMES)
def test_saved_activations_match_the_formula(quantization, dtype, autocast, checkpointing):
    model, processor = tiny_policy(quantization=quantization, dtype=dtype,
                                   gradient_checkpointing=checkpointing,
                                   lora=LoraArgs(r=8, alpha=16))
    torch.manual_seed(0)
    rollout = sample(model, processor, two_images(), QUESTIONS,
                     SamplingArgs(group_size=4, max_new_tokens=16), temperature=1.0)
    measured = _saved_bytes(model, rollout, autocast)
    dims, _ = memory.model_dims("tiny:tiny")
    w = memory.widths(2 if dtype == "bfloat16" else 4, quantization != "none", autocast)
    n, p, t = len(rollout), rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    tokens = 2 * p + n * t  # the 2 prompts once, the 8 completions on their keys and values
    if checkpointing:  # layer inputs kept (the prompts' keys and values are not saved tensors)
        per_layer = tokens * dims.hidden * w.residual
    else:
        per_layer = memory.shared_layer_bytes(dims, w, n, 2, p, t, 8,
                                              tuple(LoraArgs().target_modules))
    outside = tokens * (4 * dims.hidden + 4) + n * t * dims.vocab * 4  # final norm, log-softmax
    outside += memory.head_copy_bytes(dims, w, autocast)  # the head's bf16 weight (4bit: fp32)
    estimate = dims.layers * per_layer + outside
    assert estimate == pytest.approx(measured, rel=0.10)


# (rows, chunk, G, most prompts in a chunk, most row slots, reason)
CHUNK_CASES = [
    (16, 64, 4, 4, 16, "one chunk: every prompt once, G slots each"),
    (16, 8, 4, 2, 8, "chunks aligned with the groups"),
    (16, 6, 4, 2, 8, "chunks cut groups: 2 + 4 rows take 2 x 4 slots"),
    (16, 2, 4, 1, 2, "chunks inside a group: its rows only"),
    (12, 5, 3, 3, 9, "a chunk of 1 + 3 + 1 rows of 3 prompts: 3 x 3 slots"),
]


@pytest.mark.parametrize(("rows", "chunk", "G", "prompts", "slots", "reason"), CHUNK_CASES,
                         ids=[c[-1] for c in CHUNK_CASES])
def test_generation_chunks(rows, chunk, G, prompts, slots, reason):
    assert memory_rows.generation_chunks(rows, chunk, G) == (prompts, slots)


def test_generation_keeps_each_prompts_keys_once():
    # The prompt part of the generation cache does not grow with G; each row's own part does.
    s = _settings("qwen2_5_vl_7b_qlora.yaml")
    parts = {g: memory.plan(replace(s, group_size=g, generation_batch_size=64)).phases[
        "generation"] for g in (4, 8)}
    key = "KV cache, prompt part (once per prompt, fp32)"
    assert parts[4].held[key] == parts[8].held[key] > 0
    own = "decode: each row's KV cache + attention"
    assert parts[8].transient[own] > 1.9 * parts[4].transient[own]


def test_merged_adapter_weights_are_the_tensors_the_sampler_merges():
    model, _ = tiny_policy()
    with plain_lora(model, merge=True):
        merged = sum(m.forward.keywords["merged"].numel() * 4 for m in model.modules()
                     if "forward" in vars(m))
    s = memory.StepSettings(dims=memory.model_dims("tiny:tiny")[0],
                            lora_targets=tuple(LoraArgs().target_modules))
    assert merged > 0 and memory_model.merged_weight_bytes(s) == merged
    key = "merged adapter weights (float32 bases)"
    assert memory.plan(s).phases["generation"].held[key] == merged
    # Nothing is merged, nor planned, off float32 or with merging off.
    for off in (dict(merge_lora=False), dict(dtype_bytes=2), dict(autocast=True),
                dict(quantization="4bit")):
        assert key not in memory.plan(replace(s, **off)).phases["generation"].held, off


def test_no_full_vocabulary_logits_in_generation_or_the_loss_pass():
    model, processor = tiny_policy()
    lengths: list[tuple[bool, int]] = []
    head = model.get_base_model().lm_head
    hook = head.register_forward_hook(
        lambda m, args, out: lengths.append((torch.is_grad_enabled(), out.shape[1])))
    try:
        rollout = sample(model, processor, two_images(), QUESTIONS,
                         SamplingArgs(group_size=2, max_new_tokens=8), temperature=1.0)
        generated = list(lengths)
        completion_logits(model, rollout, slice(0, 2))  # one prompt, shared by 2 rows
        shared = list(lengths)
        completion_logits(model, rollout, slice(0, 2), share_prompt=False)
    finally:
        hook.remove()
    assert generated and {n for _, n in generated} == {1}  # sampling: the last position only
    width = rollout.completion_ids.shape[1]
    # One head call either way (under autocast each call keeps a copy of the head's weight):
    # the prompt's last position and the completions' own; or each whole row's last T + 1.
    assert shared[len(generated):] == [(True, width)]
    assert lengths[len(shared):] == [(True, width + 1)]


# ---------------------------------------------------------------- configs and the CLI


def _settings(*overlays: str, overrides: tuple[str, ...] = ()) -> memory.StepSettings:
    paths = [CONFIGS / "tiny.yaml", *(CONFIGS / o for o in overlays)]
    return memory.settings_from_config(memory.load_config(paths, list(overrides)))


def test_overlays_merge_in_order_and_overrides_win():
    s = _settings("qwen2_5_vl_7b_qlora.yaml", overrides=("--model.sampling.group_size=6",))
    assert s.dims == memory.QWEN2_5_VL["Qwen/Qwen2.5-VL-7B-Instruct"]
    assert (s.quantization, s.dtype_bytes, s.autocast, s.checkpointing) == ("4bit", 2, True, True)
    assert (s.group_size, s.micro_batch_size, s.batch_size) == (6, 2, 2)  # tiny.yaml's 16, 4 lost
    assert s.image_tokens == 200704 // 784
    tiny = _settings()
    assert (tiny.quantization, tiny.autocast, tiny.micro_batch_size, tiny.lora_r) == \
        ("none", False, 16, 8)


def test_data_defaults_follow_the_datamodule():
    from datamodules.image_question import ImageQuestionDataModule

    defaults = inspect.signature(ImageQuestionDataModule).parameters
    bare = memory.settings_from_config({"model": {"policy": {"model": "tiny:tiny"}}})
    assert bare.batch_size == defaults["batch_size"].default
    assert bare.max_pixels == defaults["max_pixels"].default


@pytest.mark.parametrize(("overlay", "gpu_gb"), [("qwen2_5_vl_7b_qlora.yaml", 22),
                                                 ("qwen2_5_vl_3b_qlora.yaml", 16),
                                                 ("qwen2_5_vl_3b_lora_bf16.yaml", 24)])
def test_shipped_single_gpu_configs_fit_their_gpu(overlay, gpu_gb):
    plan = memory.plan(_settings(overlay))
    assert plan.device_bytes <= gpu_gb * memory.GB, memory.table(plan, gpu_gb)


def test_largest_fitting_is_the_boundary():
    s = _settings("qwen2_5_vl_7b_qlora.yaml", overrides=("--model.policy.quantization=none",))
    assert memory.largest_fitting(s, "micro_batch_size", 16 * memory.GB) is None  # bf16 weights
    budget = 24 * memory.GB
    big = replace(s, dims=memory.QWEN2_5_VL["Qwen/Qwen2.5-VL-3B-Instruct"],
                  micro_batch_size=64, checkpointing=False)
    assert memory.plan(big).device_bytes > budget
    value = memory.largest_fitting(big, "micro_batch_size", budget)
    assert value is not None and 1 <= value < 64
    assert memory.plan(replace(big, micro_batch_size=value)).device_bytes <= budget
    assert memory.plan(replace(big, micro_batch_size=value + 1)).device_bytes > budget
    pixels = memory.largest_fitting(replace(big, micro_batch_size=value + 1), "max_pixels", budget)
    assert pixels is None or pixels % 784 == 0


def test_cli_prints_the_table_and_what_fits(capsys):
    memory.main(["-c", str(CONFIGS / "tiny.yaml"), "-c", str(CONFIGS / "qwen2_5_vl_7b_qlora.yaml"),
                 "--gpu-gb", "12", "--", "--model.grpo.micro_batch_size=8"])
    out = capsys.readouterr().out
    for text in ("weights", "KV cache", "loss pass", "does NOT fit", "micro_batch_size",
                 "max_new_tokens", "max_pixels"):
        assert text in out


def test_tiny_config_reads_the_local_tokenizer():
    dims, folder = memory.model_dims("tiny:small")
    assert json.loads((Path(folder) / "config.json").read_text())["text_config"]["hidden_size"] \
        == dims.hidden == 256
    assert Path(folder) == Path(resolve_model("tiny:small"))
    assert memory.prompt_text_tokens("Be brief.", 40, folder) > 10
    assert memory.prompt_text_tokens("x" * 400, 200, None) == 170  # 600 / 4 + 20


# ---------------------------------------------------------------- what grows with N and G^2


def _peak_allocated(fn) -> int:
    """The highest bytes of CPU tensors alive at once while ``fn`` runs (memory_check's way)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    sizes = [e.nbytes() for e in sorted(prof.profiler.kineto_results.events(),
                                        key=lambda e: e.start_ns()) if e.name() == "[memory]"]
    return max(itertools.accumulate(sizes))


def test_rollout_formula_counts_a_real_rollouts_tensors():
    model, processor = tiny_policy()
    rollout = sample(model, processor, two_images(), QUESTIONS,
                     SamplingArgs(group_size=3, max_new_tokens=8), temperature=1.0)
    n, p, t = len(rollout), rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    kept = sum(getattr(rollout, name).nbytes for name in (
        "prompt_ids", "prompt_mask", "mm_token_type_ids", "completion_ids", "completion_mask",
        "answer_mask", "logp", "max_prob", "position_ids"))
    passes = 4 * n * t * 4  # blank image, reference at T and at 1, old policy: (N, T) fp32
    assert memory_rows.rollout_bytes(n, p, t) == kept + passes


@pytest.mark.parametrize("group_size", [200, 400])
def test_pairwise_statistics_cost_what_the_plan_says_per_pair(group_size):
    from srmcr.cues.answer_agreement import group_votes
    from srmcr.validity import group_auc

    groups, n = 2, 2 * group_size
    keys = [None if i % 5 == 0 else str(i % 7) for i in range(n)]
    votes = _peak_allocated(lambda: group_votes(keys, group_size))
    assert votes == pytest.approx(memory_rows.pairwise_bytes(groups, group_size, memory_rows.VOTE_BYTES),
                                  rel=0.05)
    scores, correct = torch.rand(n), torch.rand(n) > 0.5
    auc = _peak_allocated(lambda: group_auc(scores, correct, group_size))
    assert auc == pytest.approx(memory_rows.pairwise_bytes(groups, group_size, memory_rows.AUC_BYTES),
                                rel=0.05)


def test_the_plan_counts_the_rows_and_pairs_of_a_large_group():
    s = replace(_settings(), group_size=10_000, val_group_size=10_000, answer_votes=True)
    p = memory.plan(s)
    n = s.batch_size * s.group_size
    reward = p.phases["reward"]
    assert reward.held["the rollout (N rows)"] == memory_rows.rollout_bytes(
        n, s.prompt_tokens, s.max_new_tokens)
    assert reward.transient["sentence embeddings of the texts"] == memory_rows.embeddings_bytes(n)
    assert reward.transient["answer votes, (B, G, G)"] == 9 * s.batch_size * 10_000 ** 2
    validation = p.phases["sampled validation"]
    pairs = validation.transient["within-group AUC pairs, (B, G, G)"]
    assert pairs == 25 * s.batch_size * 10_000 ** 2 and p.peak_phase == "sampled validation"
    assert p.peak_bytes > pairs >= 10 * memory.GB  # without them, the plan said 0.7 GB
    # Each phase after sampling holds the rollout; the pairs grow with G^2, the rows with G.
    assert all("the rollout (N rows)" in p.phases[k].held
               for k in ("log-prob passes", "reward", "loss pass"))
    double = memory.plan(replace(s, group_size=20_000, val_group_size=20_000))
    assert double.phases["reward"].transient["answer votes, (B, G, G)"] == 4 * \
        reward.transient["answer votes, (B, G, G)"]
    assert double.phases["reward"].held["the rollout (N rows)"] == 2 * \
        reward.held["the rollout (N rows)"]


def test_a_config_without_validation_data_plans_no_sampled_validation():
    assert "sampled validation" in memory.plan(_settings()).phases  # tiny.yaml's val, G = 4
    bare = memory.settings_from_config({"model": {"policy": {"model": "tiny:tiny"}}})
    assert bare.val_group_size == 0 and "sampled validation" not in memory.plan(bare).phases


def test_check_fits_names_the_plan_the_budget_and_what_fits():
    from srmcr.errors import ConfigError

    config = memory.load_config([CONFIGS / "tiny.yaml"], [
        "--model.policy.model=tiny:tiny", "--model.sampling.val_group_size=1024",
        "--data.batch_size=16"])
    planned = memory.plan(memory.settings_from_config(config))
    needed = planned.device_bytes
    assert memory.check_fits(config, needed, "enough") is not None
    with pytest.raises(ConfigError) as refused:
        memory.check_fits(config, needed - 1, "a test machine's RAM")
    message = str(refused.value)
    assert message.startswith(f"this config's memory plan needs {needed / memory.GB:.1f} GB "
                              "(peak in the sampled validation phase), more than a test "
                              "machine's RAM: set ")
    assert "\n" not in message
    advised = re.findall(r"model\.\w+\.(\w+) to (\d+)", message)
    assert ("val_group_size", "1023") in advised
    for knob, value in advised:  # each the boundary, the others as configured
        settings = replace(planned.settings, **{knob: int(value)})
        assert memory.plan(settings).device_bytes <= needed - 1


def test_a_plan_that_fits_only_without_the_merged_copies_turns_them_off(caplog):
    from srmcr.errors import ConfigError

    # 3B in float32: decoding's merged copies (~11 GB) make generation the peak phase.
    config = memory.load_config(
        [CONFIGS / "tiny.yaml", CONFIGS / "qwen2_5_vl_3b_lora_bf16.yaml"],
        ["--model.policy.dtype=float32", "--trainer.precision=32-true",
         "--model.grpo.micro_batch_size=1"])
    settings = memory.settings_from_config(config)
    merged = memory.plan(settings).device_bytes
    unmerged = memory.plan(replace(settings, merge_lora=False)).device_bytes
    assert memory.plan(settings).peak_phase == "generation" and unmerged < merged
    assert memory.check_fits(config, merged, "enough").settings.merge_lora  # room: merged
    with caplog.at_level("WARNING", logger="tools.memory"):
        planned = memory.check_fits(config, unmerged, "a test GPU")
    assert not planned.settings.merge_lora and planned.device_bytes == unmerged
    assert caplog.messages == [
        f"warning: model.sampling.merge_lora is off for this run: decoding's merged weight "
        f"copies ({memory.merged_weight_bytes(settings) / memory.GB:.1f} GB) would not fit a "
        f"test GPU ({merged / memory.GB:.1f} GB planned with them, {unmerged / memory.GB:.1f} "
        "without); set it to false to silence this"]
    assert re.search(r"merge_lora +false", memory.advice(settings, unmerged / memory.GB))
    # Too small even without them: refused as before. Half precision merges nothing.
    with pytest.raises(ConfigError):
        memory.check_fits(config, unmerged - 1, "a test GPU")
    assert not memory.unmerged_fits(replace(settings, dtype_bytes=2), unmerged)
