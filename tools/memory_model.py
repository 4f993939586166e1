"""The memory model of one SR-MCR step: sizes, widths and formulas (see ``tools.memory``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tools.memory_rows import (
    AUC_BYTES,
    VOTE_BYTES,
    embeddings_bytes,
    generation_chunks,
    pairwise_bytes,
    rollout_bytes,
    sampled_tokens_bytes,
)

GB = 1e9
PATCH_PIXELS = 14 * 14  # one vision patch; 2x2 patches merge into one image token
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # nf4 + 8-bit absmax per 64 + fp32 per 256 blocks
INT8_BYTES = 1.0
NF4_MATRIX_BYTES = (16 + 256 + 1) * 4  # per quantized matrix: nf4 and absmax codebooks, offset
ENCODER_BYTES = 90_868_376  # all-MiniLM-L6-v2 in fp32 (the packaged model.safetensors)
CUDA_CONTEXT_BYTES = 0.5 * GB  # CUDA context and kernels: outside the allocator's count
ALLOCATOR_SLACK = 0.10  # fragmentation of the caching allocator over the allocated peak
QUESTION_FILLER = "How many red circles are to the left of the large blue square in the picture? "
KNOBS = ("micro_batch_size", "generation_batch_size", "group_size", "val_group_size",
         "max_new_tokens", "max_pixels")
GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


@dataclass(frozen=True)
class ModelDims:
    """The architecture numbers the formulas need (a Qwen2.5-VL ``config.json``)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


# The published configs (hub config.json files cannot be downloaded on every machine).
QWEN2_5_VL = {
    "Qwen/Qwen2.5-VL-3B-Instruct": ModelDims(2048, 36, 16, 2, 11008, 151936, True, 32, 1280, 3420),
    "Qwen/Qwen2.5-VL-7B-Instruct": ModelDims(3584, 28, 28, 4, 18944, 152064, False, 32, 1280, 3420),
}


@dataclass(frozen=True)
class StepSettings:
    """Everything of a config that memory depends on (see ``settings_from_config``)."""

    dims: ModelDims
    quantization: str = "none"  # none | 4bit | 8bit
    dtype_bytes: int = 4  # policy.dtype
    autocast: bool = False  # trainer.precision *-mixed
    checkpointing: bool = False
    attention: str = "sdpa"
    lora_r: int = 16
    lora_targets: tuple[str, ...] = tuple(t for g in GROUPS for t in g)
    optimizer_states: int = 2  # AdamW: exp_avg, exp_avg_sq
    batch_size: int = 4  # B
    group_size: int = 4  # G
    max_new_tokens: int = 64  # T
    generation_batch_size: int = 64
    merge_lora: bool = True  # sampling.merge_lora: float32 bases decode with merged copies
    micro_batch_size: int = 8
    max_pixels: int = 448 * 448
    prompt_text_tokens: int = 100  # P without the image tokens
    encoder: bool = True  # text cues load the sentence encoder onto the device
    answer_votes: bool = False  # the reward's answer agreement compares a group's answers
    val_group_size: int = 0  # G of the sampled validation (0: none)

    @property
    def image_tokens(self) -> int:
        return self.max_pixels // (4 * PATCH_PIXELS)

    @property
    def prompt_tokens(self) -> int:
        return self.prompt_text_tokens + self.image_tokens


@dataclass(frozen=True)
class Widths:
    """Bytes per element of the tensors a step keeps, for one precision setup."""

    residual: int  # residual stream, checkpointed layer inputs, RMSNorm outputs
    linear: int  # outputs of the frozen projections: q/k/v, MLP gate/up/silu
    attention: int  # what SDPA keeps: q, k, v, output, mask bias
    lora_input: int  # each adapter's copy of its input (0: shares the projection's input)
    lora_hidden: int  # lora_A outputs (r wide)


def widths(dtype_bytes: int, quantized: bool, autocast: bool) -> Widths:
    residual = 4 if dtype_bytes == 4 or quantized else dtype_bytes  # QLoRA upcasts to fp32
    compute = 2 if autocast else dtype_bytes
    linear = residual if quantized else compute  # bitsandbytes returns its input's dtype
    # LoRA is fp32: autocast casts each adapter's input to bf16 (one copy per projection);
    # without autocast a non-fp32 input is cast to fp32; fp32 inputs are shared.
    lora_input = 2 if autocast else (0 if linear == residual == 4 else 4)
    return Widths(residual, linear, 2 if autocast else linear, lora_input, 2 if autocast else 4)


@dataclass
class Phase:
    """One phase of the step: ``held`` parts add up, ``transient`` parts come one at a time."""

    held: dict[str, float]
    transient: dict[str, float]

    @property
    def bytes(self) -> float:
        return sum(self.held.values()) + max(self.transient.values(), default=0.0)


@dataclass
class MemoryPlan:
    """Bytes by part: ``resident`` through the whole step, each phase on top of it in turn."""

    settings: StepSettings
    resident: dict[str, float]
    phases: dict[str, Phase]

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: self.phases[name].bytes)

    @property
    def peak_bytes(self) -> float:
        """Allocated peak: what ``torch.cuda.max_memory_allocated`` would report."""
        return sum(self.resident.values()) + self.phases[self.peak_phase].bytes

    @property
    def device_bytes(self) -> float:
        """What the GPU must have: the peak, allocator slack and the CUDA context."""
        return self.peak_bytes * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_BYTES


# ---- weights and trainable state ----------------------------------------------------------
def projection_shapes(d: ModelDims) -> dict[str, tuple[int, int]]:
    h, kv, i = d.hidden, d.kv_dim, d.intermediate
    return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def decoder_linear_params(d: ModelDims) -> int:
    """Weights of the language model's projections (what 4-/8-bit quantizes)."""
    return d.layers * sum(i * o for i, o in projection_shapes(d).values())


def vision_params(d: ModelDims) -> int:
    v, vi, merged = d.vision_hidden, d.vision_intermediate, 4 * d.vision_hidden
    block = 3 * v * v + 3 * v + v * v + v + 3 * v * vi + 2 * vi + v + 2 * v
    merger = v + merged * merged + merged + merged * d.hidden + d.hidden
    return 3 * 2 * PATCH_PIXELS * v + d.vision_depth * block + merger


def other_params(d: ModelDims) -> int:
    """Embeddings, lm_head, norms and q/k/v biases: never quantized."""
    embeddings = d.vocab * d.hidden * (1 if d.tied else 2)
    return embeddings + d.layers * (2 * d.hidden + d.hidden + 2 * d.kv_dim) + d.hidden


def weight_bytes(d: ModelDims, quantization: str, dtype_bytes: int) -> float:
    if quantization == "none":
        return (decoder_linear_params(d) + vision_params(d) + other_params(d)) * dtype_bytes
    per_param, per_matrix = (NF4_BYTES, NF4_MATRIX_BYTES) if quantization == "4bit" else \
        (INT8_BYTES, 4 * d.hidden)  # int8: fp32 scale per output row (about)
    quantized = decoder_linear_params(d) * per_param + 7 * d.layers * per_matrix
    # prepare_model_for_kbit_training casts every parameter that is not quantized to fp32.
    return quantized + (vision_params(d) + other_params(d)) * 4


def lora_params(d: ModelDims, r: int, targets: tuple[str, ...]) -> int:
    return d.layers * sum(r * sum(projection_shapes(d)[t]) for t in set(targets))


def merged_weight_bytes(s: StepSettings) -> float:
    """The copies of the adapted projections' weights with the adapter merged in, which decoding
    holds where ``sampling.merge_lora`` merges (float32 unquantized bases, no autocast)."""
    if not s.merge_lora or s.quantization != "none" or s.dtype_bytes != 4 or s.autocast:
        return 0.0
    shapes = projection_shapes(s.dims)
    return s.dims.layers * sum(i * o for i, o in (shapes[t] for t in set(s.lora_targets))) * 4


# ---- activations -----------------------------------------------------------------------------
def attended_kv_width(d: ModelDims, attention: str) -> int:
    """Width of the keys (and values) attention reads per token: sdpa and eager repeat them per
    query head (grouped-query attention undone), flash-attention reads the kv heads as they are."""
    return d.kv_dim if attention == "flash_attention_2" else d.hidden


def layer_activation_bytes(d: ModelDims, w: Widths, seq: int, r: int,
                           targets: tuple[str, ...], attention: str = "sdpa") -> float:
    """Bytes one decoder layer keeps for backward, per token of a sequence of ``seq`` tokens."""
    h, i, shapes = d.hidden, d.intermediate, projection_shapes(d)
    kv = attended_kv_width(d, attention)
    kept = 2 * (4 * h + 4)  # both RMSNorms keep their input in fp32, and 1/rms
    kept += (2 * h + 2 * kv) * w.attention + 4 * d.heads  # q, k, v, output; log-sum-exp
    kept += {"sdpa": seq * w.attention, "eager": 2 * d.heads * seq * w.attention}.get(attention, 0)
    kept += 3 * i * w.linear  # gate, up, silu(gate)
    if w.lora_input:
        kept += sum(shapes[t][0] for t in set(targets)) * w.lora_input
    else:  # fp32: adapters share their input with the projection (o_proj's is SDPA's output)
        shared = {0: h * w.residual, 1: 0, 2: h * w.residual, 3: i * w.linear}
        kept += sum(shared[k] for k, group in enumerate(GROUPS) if set(group) & set(targets))
    return kept + len(set(targets)) * r * w.lora_hidden


def shared_prompts(rows: int, group_size: int) -> int:
    """Most distinct prompts in a micro-batch of ``rows`` consecutive rows that starts at a
    multiple of ``rows`` (groups of ``group_size`` are contiguous)."""
    if group_size % rows == 0 or rows % group_size == 0:
        return -(-rows // group_size)  # aligned with the groups
    return min(rows, -(-rows // group_size) + 1)


def shared_layer_bytes(d: ModelDims, w: Widths, rows: int, prompts: int, p: int, t: int, r: int,
                       targets: tuple[str, ...], attention: str = "sdpa") -> float:
    """Bytes one decoder layer keeps for backward when the ``prompts`` distinct prompts of
    ``rows`` rows run once and the completions on their repeated keys and values
    (``logprobs.completion_logits``): the prompts' tokens as sequences of ``p``, the
    completions' as sequences of ``p + t``, and the attention's copy of the prompt keys and
    values for every row (k, v repeated per head under sdpa/eager)."""
    kv = attended_kv_width(d, attention)
    return (prompts * p * layer_activation_bytes(d, w, p, r, targets, attention)
            + rows * t * layer_activation_bytes(d, w, p + t, r, targets, attention)
            + rows * p * 2 * kv * w.attention)


def no_grad_layer_bytes(d: ModelDims, w: Widths, seq: int) -> float:
    """Peak of one decoder layer without grad, per token: in the MLP, four I-wide tensors (silu,
    up, an adapter's output, their sum) beside the residual, the norm output and the input
    embeddings; in attention, about seven H-wide q/k/v/rope/repeat/output temporaries and the
    float mask row. The bool (S, S) mask and the rotary tables live through the forward."""
    held = 3 * d.hidden * 4 + seq + 2 * d.head_dim * 4
    mlp = 4 * d.intermediate * w.linear
    attention = 7 * d.hidden * w.linear + seq * w.attention
    return held + max(mlp, attention)


def pixel_bytes(rows: int, image_tokens: int) -> float:
    """fp32 pixel patches of each row's image (rows repeat their prompt's image): 4 patches of
    3 x 2 x 14 x 14 values per image token."""
    return rows * 4 * image_tokens * 3 * 2 * PATCH_PIXELS * 4


def vision_bytes(d: ModelDims, images: int, image_tokens: int) -> float:
    """No-grad working set of the vision tower (fp32 under QLoRA) for ``images`` images."""
    patches = images * 4 * image_tokens
    return patches * (8 * d.vision_hidden + 3 * d.vision_intermediate) * 4


def logits_bytes(rows: int, tokens: int, vocab: int, copies: int) -> float:
    """fp32 (rows, T, V) logits: the float copy, /temperature, log-softmax and its gradient."""
    return copies * rows * tokens * vocab * 4


def kv_cache_bytes(d: ModelDims, w: Widths, rows: int, seq: int) -> float:
    return rows * seq * d.layers * 2 * d.kv_dim * w.linear


def head_copy_bytes(d: ModelDims, w: Widths, autocast: bool) -> float:
    """Under autocast an fp32 ``lm_head`` (fp32 weights, or QLoRA's upcast) keeps a bf16 copy
    of its (V, H) weight for backward: the loss pass calls it once."""
    return d.vocab * d.hidden * 2 if autocast and w.residual == 4 else 0.0


def checkpointed_loss_pass(d: ModelDims, w: Widths, s: StepSettings, rows: int,
                           prompts: int) -> tuple[dict[str, float], dict[str, float]]:
    """Held and backward-transient bytes of a checkpointed loss pass over ``rows`` rows whose
    ``prompts`` distinct prompts run once (``srmcr.prefix``; whole rows when ``prompts ==
    rows``). Held: each layer's input, the prompts' keys and values (recorded once, and their
    copy per row that the completions read). In backward, one layer recomputed at a time, and the
    gradients of the recorded keys and values, which pile up over the completions' layers until
    the prompts' layers run backward."""
    p, t = s.prompt_tokens, s.max_new_tokens
    act = lambda seq: layer_activation_bytes(  # noqa: E731
        d, w, seq, s.lora_r, s.lora_targets, s.attention)
    gradients = 2 * (d.intermediate + d.hidden) * w.linear
    recomputed = lambda n, seq: n * (act(seq) + gradients)  # noqa: E731
    logits = logits_bytes(rows, t, d.vocab, 1)
    if prompts == rows:  # no two rows share a prompt: whole rows
        tokens = rows * (p + t)
        return ({"checkpointed layer inputs": d.layers * tokens * d.hidden * w.residual},
                {"recomputed layer + gradients": recomputed(tokens, p + t) + logits})
    record = kv_cache_bytes(d, w, prompts, p)
    kv = attended_kv_width(d, s.attention)
    completion_layer = recomputed(rows * t, p + t) + rows * p * 2 * kv * w.attention
    return ({"checkpointed layer inputs": d.layers * (prompts * p + rows * t) * d.hidden
             * w.residual,
             "prompts' keys and values, and their copy per row": record
             + kv_cache_bytes(d, w, rows, p)},
            {"recomputed layer + gradients": max(completion_layer, recomputed(prompts * p, p))
             + logits + record})


# ---- the reward, sampling, the sampled validation -------------------------------------------
def reward_phase(s: StepSettings, rows: int, group_size: int) -> Phase:
    """The reward over ``rows`` completions in groups of ``group_size``: the rollout it scores,
    and one at a time the text cues' embeddings and the answer votes."""
    p, t = s.prompt_tokens, s.max_new_tokens
    transient = {}
    if s.encoder:
        transient["sentence embeddings of the texts"] = embeddings_bytes(rows)
    if s.answer_votes:
        transient["answer votes, (B, G, G)"] = pairwise_bytes(
            rows // group_size, group_size, VOTE_BYTES)
    return Phase({"the rollout (N rows)": rollout_bytes(rows, p, t)}, transient)


def generation_phase(s: StepSettings) -> Phase:
    """Sampling the step's N = B * G completions in chunks of ``generation_batch_size`` rows:
    each prompt prefilled once, its keys and values kept once for its rows (fp32,
    ``group_attention``), each row's own in slots reserved for all its tokens; decoding
    attention holds scores, not repeated keys. The step's B images' pixels live throughout, and
    on float32 bases the merged adapter weights (``merged_weight_bytes``)."""
    d, w = s.dims, widths(s.dtype_bytes, s.quantization != "none", s.autocast)
    n = s.batch_size * s.group_size
    rows, p, t = min(s.generation_batch_size, n), s.prompt_tokens, s.max_new_tokens
    (prompts, slots), fp32 = generation_chunks(n, rows, s.group_size), replace(w, linear=4)
    prefill_cache = kv_cache_bytes(d, w, prompts, p) if w.linear != 4 else 0.0  # before fp32
    live = {"sampled tokens of every chunk (N rows)": sampled_tokens_bytes(n, p, t),
            "KV cache, prompt part (once per prompt, fp32)": kv_cache_bytes(d, fp32, prompts, p),
            "pixels of the step's images": pixel_bytes(s.batch_size, s.image_tokens)}
    if merged_weight_bytes(s):
        live["merged adapter weights (float32 bases)"] = merged_weight_bytes(s)
    return Phase(live, {
        "prefill, one layer": prompts * p * no_grad_layer_bytes(d, w, p) + prefill_cache,
        "vision tower (each prompt's image)": vision_bytes(d, s.batch_size, s.image_tokens),
        "decode: each row's KV cache + attention": kv_cache_bytes(d, fp32, slots, t + 1)
        + 4 * slots * d.heads * (p + t) * 4 + 3 * rows * d.vocab * 4})  # scores; sampling


def validation_phase(s: StepSettings) -> Phase:
    """A validation batch's sampled groups (``val_group_size``): sampling them, then scoring
    them with every diagnostic (answer votes included) and the within-group AUC of each signal,
    one signal at a time."""
    val = replace(s, group_size=s.val_group_size, answer_votes=True)
    phase = reward_phase(val, s.batch_size * s.val_group_size, s.val_group_size)
    phase.transient["sampling them (the generation phase)"] = generation_phase(val).bytes
    phase.transient["within-group AUC pairs, (B, G, G)"] = pairwise_bytes(
        s.batch_size, s.val_group_size, AUC_BYTES)
    return phase


# ---- the plan --------------------------------------------------------------------------------
def plan(s: StepSettings) -> MemoryPlan:
    d, w = s.dims, widths(s.dtype_bytes, s.quantization != "none", s.autocast)
    n = s.batch_size * s.group_size
    micro = min(s.micro_batch_size, n)
    p, t = s.prompt_tokens, s.max_new_tokens
    seq = p + t
    lora = lora_params(d, s.lora_r, s.lora_targets)
    resident = {"weights": weight_bytes(d, s.quantization, s.dtype_bytes),
                "LoRA parameters (fp32)": lora * 4,
                f"optimizer state ({s.optimizer_states} x fp32)": lora * 4 * s.optimizer_states}
    if s.encoder:
        resident["reward sentence encoder"] = ENCODER_BYTES
    prompts = shared_prompts(micro, s.group_size)  # each prompt runs once per micro-batch
    outside = (prompts * p + micro * t) * (4 * d.hidden + 4 + 2 * d.head_dim * 4)  # final norm
    if s.checkpointing:
        saved, backward = checkpointed_loss_pass(d, w, s, micro, prompts)
        saved["checkpointed layer inputs"] += outside
    else:
        saved = {"saved activations, all layers (prompts shared)":
                 d.layers * shared_layer_bytes(d, w, micro, prompts, p, t, s.lora_r,
                                               s.lora_targets, s.attention) + outside}
        backward = {}
    if head_copy_bytes(d, w, s.autocast):
        saved["lm_head weight, bf16 copy for backward"] = head_copy_bytes(d, w, s.autocast)
    generation = generation_phase(s)
    # No-grad passes share each prompt too: the prompts once, then the completions on the
    # prompts' keys and values repeated for every row.
    pixels = pixel_bytes(prompts, s.image_tokens)  # held by the forward, freed before the logits
    repeated_kv = kv_cache_bytes(d, w, micro + prompts, p)
    rollout = rollout_bytes(n, p, t)
    logprobs = Phase({"prompt KV cache, repeated per row": repeated_kv,
                      "the rollout (N rows)": rollout},
                     {"prompts: one layer + pixels": prompts * p * no_grad_layer_bytes(d, w, p)
                      + pixels,
                      "completions: one layer": micro * t * no_grad_layer_bytes(d, w, seq)
                      + micro * seq * 2 * attended_kv_width(d, s.attention) * w.attention,
                      "vision tower + pixels": vision_bytes(d, prompts, s.image_tokens) + pixels,
                      "logits (3 x fp32, completion only)": logits_bytes(micro, t, d.vocab, 3)})
    loss = Phase({"LoRA gradients (fp32)": lora * 4, "the rollout (N rows)": rollout, **saved},
                 {"logits + gradient (4 x fp32, completion only)":
                  logits_bytes(micro, t, d.vocab, 4), **backward})
    phases = {"generation": generation, "log-prob passes": logprobs,
              "reward": reward_phase(s, n, s.group_size), "loss pass": loss}
    if s.val_group_size:  # G completions of each labelled question, and their AUC pairs
        phases["sampled validation"] = validation_phase(s)
    return MemoryPlan(s, resident, phases)

