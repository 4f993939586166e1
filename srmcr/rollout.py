"""Sampling G completions per prompt into a typed ``Rollout``.

Shape letters: B prompts, G completions per prompt, N = B*G, P prompt tokens, T completion tokens.
Completions of one prompt are contiguous (``x.view(B, G, ...)`` holds).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from srmcr import prompts
from srmcr.errors import require
from srmcr.group_attention import group_cache, group_decoding, supports_group_decoding
from srmcr.lora_forward import plain_lora
from srmcr.parsing import Parsed, parse
from srmcr.prefix import language_core, prompt_groups

# A group's statistics (the reward's answer votes, the validation's within-group AUC) compare
# every pair of its completions, so a step costs B x G^2 (10^8 pairs per prompt at G = 10^4) on
# top of sampling and scoring B x G completions. Published GRPO runs use G = 4 to 64.
MAX_GROUP_SIZE = 1024

# Special tokens the policy may emit: only the end of its turn. A weak model that samples
# <|image_pad|> breaks the next forward ("Image features and image tokens do not match").
END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class SamplingArgs:
    """How completions are sampled."""

    group_size: int = 4
    """G: completions per prompt (the group GRPO normalizes over), 2 to 1024."""
    max_new_tokens: int = 64
    """Completion length cap; longer completions are truncated (and flagged)."""
    temperature: float = 1.0
    """Initial sampling temperature; the ConfidenceCooling callback steers it after each step."""
    top_p: float = 1.0
    """Nucleus sampling (1 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    generation_batch_size: int = 64
    """Sequences per generate call; lower it if generation runs out of memory."""
    merge_lora: bool = True
    """Decode with each float32 adapted projection's adapter merged into a copy of its weight
    (one matrix product per projection and token instead of three; the same samples to float
    rounding, at the memory of that copy). Half-precision, autocast and 4-bit bases never merge;
    ``main.py fit`` turns it off, with a warning, where the memory plan fits only without it."""
    system_prompt: str = prompts.SYSTEM_PROMPT
    """System prompt asking for the <think>/<answer> format."""
    val_group_size: int | None = None
    """G of the sampled validation: completions per labelled validation question, sampled at
    the current training temperature, for val/sample_accuracy, val/majority_accuracy and
    val/reward_auc (None: group_size; 0: off, greedy validation only)."""
    val_sample_batches: int | None = None
    """Sample on the first this many validation batches only (None: all), to keep validation
    cheap; the greedy val/accuracy still covers every batch."""

    def __post_init__(self) -> None:
        g, val, batches = self.group_size, self.val_group_size, self.val_sample_batches
        require({
            f"sampling.group_size={g}: set it to 2 or more (a group of one has no baseline)":
                g >= 2,
            f"sampling.group_size={g}: set it to {MAX_GROUP_SIZE} or less (a group's statistics "
            "compare every pair of its completions, so a step costs B x G^2)":
                g <= MAX_GROUP_SIZE,
            f"sampling.max_new_tokens={self.max_new_tokens}: set it to 1 or more":
                self.max_new_tokens >= 1,
            f"sampling.temperature={self.temperature}: set it above 0 (1 samples the model's own "
            "distribution)": 0 < self.temperature < math.inf,
            f"sampling.top_p={self.top_p}: set it above 0 and at most 1 (1 turns it off)":
                0 < self.top_p <= 1,
            f"sampling.top_k={self.top_k}: set it to 0 (off) or more": self.top_k >= 0,
            f"sampling.generation_batch_size={self.generation_batch_size}: set it to 1 or more":
                self.generation_batch_size >= 1,
            f"sampling.val_group_size={val}: set it to 0 (off), 2 to {MAX_GROUP_SIZE}, or null "
            "(= group_size)": val is None or val == 0 or 2 <= val <= MAX_GROUP_SIZE,
            f"sampling.val_sample_batches={batches}: set it to 0 or more, or null (every batch)":
                batches is None or batches >= 0,
        })


@dataclass
class ImageFeatures:
    """The vision tower's output for each image of a rollout, computed once by the sampler. The
    tower is frozen and has no adapter (nor dropout): every later pass over the same patches
    (reference, loss) would compute the same values, without a graph."""

    pixel_values: Tensor  # the patches they come from: used only while the rollout still has them
    per_image: tuple[Tensor, ...]  # (B,) each (image tokens, H)


@dataclass(frozen=True)
class Rollout:
    """The sampled completions of one step, immutable once sampled: what the reward needs
    beyond them comes as explicit inputs (``srmcr.cues.CueInputs``). Tensors live on the
    policy's device; ``dataclasses.replace`` makes a changed copy."""

    group_size: int  # G
    questions: list[str]  # (N,) the question of each completion, repeated G times
    texts: list[str]  # (N,) decoded completions, special tokens removed
    parsed: list[Parsed]  # (N,) parsing.parse(text)
    prompt_ids: Tensor  # (N, P) left-padded
    prompt_mask: Tensor  # (N, P)
    mm_token_type_ids: Tensor  # (N, P) 1 on image tokens
    completion_ids: Tensor  # (N, T) right-padded
    completion_mask: Tensor  # (N, T) 1 on sampled tokens up to and including the end token
    truncated: Tensor  # (N,) bool: hit max_new_tokens without an end token
    temperature: float  # the sampling temperature of this step
    images: list[Image.Image]  # (B,) the prompts' images
    pixel_values: Tensor  # (patches of the B images, D)
    image_grid_thw: Tensor  # (B, 3)
    ids: list[str] = field(default_factory=list)  # (N,) record ids, for error messages
    # At T = 1, read by the sampler from the logits it drew each token from (no extra forward):
    logp: Tensor | None = None  # (N, T) log pi(token | image)
    max_prob: Tensor | None = None  # (N, T) max softmax probability (confidence)
    suppressed: list[int] = field(default_factory=list)  # token ids the sampler never draws
    # 1 on the tokens of the text inside <answer>...</answer> (the sampler finds them):
    answer_mask: Tensor | None = None  # (N, T)
    # The sampler's vision-tower output, for the passes over the same images (None: recompute):
    image_features: ImageFeatures | None = None
    # mrope positions of prompt + completion, as the model numbers them (None: each pass does):
    position_ids: Tensor | None = None  # (3, N, P + T)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_groups(self) -> int:
        return len(self.texts) // self.group_size

    @property
    def well_formed(self) -> Tensor:  # (N,) float
        return torch.tensor([p.well_formed for p in self.parsed], dtype=torch.float32)


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """``model`` in eval mode inside (no dropout), its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def select_images(pixel_values: Tensor, grid: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
    """Patches and grids of the given image indices (any order, repeats allowed)."""
    counts = grid.prod(-1)  # (B,) patches per image
    starts = torch.cumsum(counts, 0) - counts
    parts = [pixel_values[s:s + c]
             for s, c in zip(starts[images].tolist(), counts[images].tolist())]
    return torch.cat(parts), grid[images]


def image_features(model, pixel_values: Tensor, grid: Tensor) -> ImageFeatures | None:
    """Each image through the vision tower once, for every pass of the step that shows it; None
    where the model cannot take them precomputed (a transformers without ``mm_encoder_outputs``)."""
    core = language_core(model)
    if "mm_encoder_outputs" not in inspect.signature(type(core).forward).parameters:
        return None
    with torch.no_grad():
        out = core.get_image_features(pixel_values, grid, return_dict=True)
    return ImageFeatures(pixel_values, tuple(out.pooler_output))


def image_inputs(pixel_values: Tensor, grid: Tensor, images: Tensor,
                 features: ImageFeatures | None = None) -> dict:
    """Model inputs that show the given images (indices, repeats allowed): their precomputed
    features when ``features`` come from these ``pixel_values``, else their patches."""
    if features is None or features.pixel_values is not pixel_values:
        pixels, grids = select_images(pixel_values, grid, images)
        return {"pixel_values": pixels, "image_grid_thw": grids}
    chosen = BaseModelOutputWithPooling(
        pooler_output=tuple(features.per_image[i] for i in images.tolist()))
    return {"mm_encoder_outputs": {"image": chosen}, "image_grid_thw": grid[images]}


def end_token_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS]


def answer_token_mask(tokenizer, ids: Tensor, mask: Tensor) -> Tensor:  # (N, T) -> (N, T)
    """1 on the completion tokens that overlap the text inside the first ``<answer>...</answer>``
    block (by the characters each token decodes to), 0 elsewhere and without such a block."""
    out = torch.zeros_like(mask)
    lengths = mask.sum(1).tolist()
    pieces = tokenizer.batch_decode(ids.reshape(-1, 1), skip_special_tokens=True)
    width = ids.shape[1]
    for row, n in enumerate(lengths):
        tokens = pieces[row * width:row * width + n]
        text = "".join(tokens)
        start = text.find("<answer>")
        end = text.find("</answer>", start + 1)
        if start < 0 or end < 0:
            continue
        lo, hi, pos = start + len("<answer>"), end, 0
        for t, piece in enumerate(tokens):
            if pos + len(piece) > lo and pos < hi:
                out[row, t] = 1
            pos += len(piece)
    return out


def completion_mask(ids: Tensor, end_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(N, T) mask up to and including the first end token, and (N,) truncation flags."""
    is_end = torch.isin(ids, torch.tensor(list(end_ids), device=ids.device))
    seen_before = (torch.cumsum(is_end.long(), dim=1) - is_end.long()) > 0
    return (~seen_before).long(), ~is_end.any(dim=1)


class SuppressTokens(LogitsProcessor):
    """transformers' ``SuppressTokensLogitsProcessor`` (the same -inf, in the same place of the
    processor chain) with its vocabulary mask built once, not at every sampled token."""

    def __init__(self, tokens: Sequence[int], vocab_size: int, device: torch.device) -> None:
        self.mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.mask[list(tokens)] = True

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return torch.where(self.mask, -float("inf"), scores)


class SampledTokenStats(LogitsProcessor):
    """Log-prob at T = 1 and max probability of every sampled token, from the raw logits the
    sampler saw (after token suppression, before temperature): the scores need no extra forward.

    Keeps two (n,) vectors per step, never (n, V). A token is known only at the next call (it is
    then the last input id), so ``finish`` reads the last one from the final sequences.
    """

    def __init__(self) -> None:
        self.logp: list[Tensor] = []
        self.max_prob: list[Tensor] = []
        self._last: Tensor | None = None  # (n, V) log-softmax of the previous step

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self._last is not None:
            self.logp.append(self._last.gather(1, input_ids[:, -1:]).squeeze(1))
        self._last = torch.log_softmax(scores.float(), dim=-1)
        self.max_prob.append(self._last.max(dim=-1).values.exp())
        return scores

    def finish(self, last_tokens: Tensor) -> tuple[Tensor, Tensor]:  # (n, steps) each
        self.logp.append(self._last.gather(1, last_tokens[:, None]).squeeze(1))
        self._last = None
        return torch.stack(self.logp, 1), torch.stack(self.max_prob, 1)


def _generation_config(args: SamplingArgs, temperature: float, tokenizer,
                       vocab_size: int) -> GenerationConfig:
    end = end_token_ids(tokenizer)
    # Also the padding rows of the embedding (vocab rounded up): they decode to nothing.
    suppress = [i for i in tokenizer.all_special_ids if i not in end]
    suppress += list(range(len(tokenizer), vocab_size))
    # top_k=0 turns top-k off (None would fall back to transformers' default of 50).
    # Everything explicit: a hub model's own generation config (top_k=1, repetition_penalty=1.05
    # for Qwen2.5-VL) would make the sampled distribution differ from the one the loss assumes.
    return GenerationConfig(do_sample=True, temperature=temperature, top_p=args.top_p,
                            top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                            repetition_penalty=1.0, eos_token_id=end, pad_token_id=end[-1],
                            suppress_tokens=suppress, use_cache=True)


def prompt_positions(model, enc) -> tuple[Tensor, Tensor]:
    """(3, B, P) mrope positions of the prompts and (B, 1) their ``rope_deltas``: the model's
    own ``get_rope_index``, once per rollout."""
    return language_core(model).get_rope_index(
        enc["input_ids"], mm_token_type_ids=enc["mm_token_type_ids"],
        attention_mask=enc["attention_mask"], image_grid_thw=enc["image_grid_thw"])


def sequence_positions(prompt: Tensor, completion_mask: Tensor) -> Tensor:
    """(3, N, P + T) positions of whole sequences from their prompts' (3, N, P), as
    ``get_rope_index`` numbers them: completion tokens are text, one step each after the
    prompt's last (text) position; masked ones are 0."""
    steps = torch.cumsum(completion_mask, dim=1) * completion_mask  # (N, T)
    return torch.cat([prompt, (prompt[..., -1:] + steps) * completion_mask], dim=-1)


def _shared_prefill(model, enc, prompts: Tensor, counts: Tensor, new_tokens: int,
                    features: ImageFeatures | None, positions: tuple[Tensor, Tensor]) -> Cache:
    """Each prompt but its last token through the model once (image included), into a cache
    that keeps those keys and values once per prompt for its ``counts`` rows, with room for
    ``new_tokens`` more positions per row (``group_attention.group_cache``), for ``generate``
    to continue from inside ``group_decoding``. ``positions``: ``prompt_positions``.

    ``generate`` then runs the last prompt token of every row and samples; it places the rows'
    text positions after the image's with the model's stored ``rope_deltas`` (continuing from a
    cache), which are set here per row as the unshared prefill would set them."""
    if enc["mm_token_type_ids"][prompts, -1].any():
        raise RuntimeError("the prompt must end in text to be prefilled once per group")
    images = image_inputs(enc["pixel_values"], enc["image_grid_thw"], prompts, features)
    cache = DynamicCache()
    head = {k: enc[k][prompts, :-1] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    model(**head, **images, position_ids=positions[0][:, prompts, :-1], cache=cache,
          use_cache=True, logits_to_keep=1)
    # The prompt's last token is text: the delta of the whole prompt is that of its head.
    language_core(model).rope_deltas = positions[1][prompts].repeat_interleave(counts, dim=0)
    return group_cache(cache, counts, capacity=1 + new_tokens)  # the last prompt token, samples


@torch.no_grad()
def sample(model, processor, images: Sequence[Image.Image], questions: Sequence[str],
           args: SamplingArgs, temperature: float, ids: Sequence[str] | None = None,
           greedy: bool = False, share_prompt: bool = True) -> Rollout:
    """Sample ``args.group_size`` completions for each (image, question) pair, or with
    ``greedy`` one deterministic completion (G = 1; evaluation).

    ``share_prompt``: prefill each prompt once for its G rows (``_shared_prefill``) and read
    its keys and values once per group at every new token (``group_attention``), rather than
    once per row; the same samples, to float rounding. Off where the model has sliding-window
    layers."""
    G, B = 1 if greedy else args.group_size, len(questions)
    device = next(model.parameters()).device
    enc = processor(text=prompts.render(processor, questions, args.system_prompt),
                    images=list(images), return_tensors="pt", padding=True).to(device)
    rows = torch.arange(B, device=device).repeat_interleave(G)  # (N,) prompt of each row
    prompt_ids, prompt_mask = enc["input_ids"][rows], enc["attention_mask"][rows]
    mm_types = enc["mm_token_type_ids"][rows]
    vocab_size = model.get_output_embeddings().weight.shape[0]
    config = _generation_config(args, temperature, processor.tokenizer, vocab_size)
    if greedy:
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    # Suppressed by SuppressTokens, first of our processors: where generate puts its own.
    suppressed, config.suppress_tokens = list(config.suppress_tokens), None
    pieces, features = [], None
    positions = prompt_positions(model, enc)
    share_prompt = share_prompt and supports_group_decoding(model)
    if share_prompt and G > 1:  # the tower once for the prefill, reference and loss passes
        features = image_features(model, enc["pixel_values"], enc["image_grid_thw"])
    # No dropout while sampling; PEFT's LoRA forward without its per-token bookkeeping.
    with eval_mode(model), plain_lora(model, merge=args.merge_lora):
        for start in range(0, B * G, args.generation_batch_size):
            part = slice(start, start + args.generation_batch_size)
            distinct, counts, _ = prompt_groups(torch.arange(B * G, device=device)[part], G)
            if share_prompt and len(distinct) < len(rows[part]):  # each prompt prefilled once
                cache = _shared_prefill(model, enc, distinct, counts, config.max_new_tokens,
                                        features, positions)
                inputs, decoding = {"cache": cache}, group_decoding(model, cache)
            else:
                pixels, grid = select_images(enc["pixel_values"], enc["image_grid_thw"], rows[part])
                inputs, decoding = {"pixel_values": pixels, "image_grid_thw": grid}, nullcontext()
            stats = SampledTokenStats()
            processors = [SuppressTokens(suppressed, vocab_size, device), stats]
            with decoding:
                out = model.generate(input_ids=prompt_ids[part], attention_mask=prompt_mask[part],
                                     mm_token_type_ids=mm_types[part], **inputs,
                                     generation_config=config,
                                     logits_processor=LogitsProcessorList(processors))
            pieces.append((out[:, prompt_ids.shape[1]:], *stats.finish(out[:, -1])))
            # The chunk's cache goes before the next chunk's prefill, not after it.
            cache = pixels = inputs = decoding = None
    pad = config.pad_token_id
    width = max(p[0].shape[1] for p in pieces)
    completion_ids, logp, max_prob = (
        torch.cat([torch.nn.functional.pad(p[i], (0, width - p[i].shape[1]), value=fill)
                   for p in pieces]) for i, fill in ((0, pad), (1, 0.0), (2, 0.0)))
    mask, truncated = completion_mask(completion_ids, config.eos_token_id)
    texts = processor.batch_decode(completion_ids * mask + pad * (1 - mask),
                                   skip_special_tokens=True)
    return Rollout(
        group_size=G, questions=[q for q in questions for _ in range(G)], texts=texts,
        parsed=[parse(t) for t in texts], prompt_ids=prompt_ids, prompt_mask=prompt_mask,
        mm_token_type_ids=mm_types, completion_ids=completion_ids, completion_mask=mask,
        truncated=truncated, temperature=temperature, images=list(images),
        pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
        ids=[i for i in (ids or [str(b) for b in range(B)]) for _ in range(G)],
        logp=logp * mask, max_prob=max_prob * mask, suppressed=suppressed,
        answer_mask=answer_token_mask(processor.tokenizer, completion_ids, mask),
        image_features=features, position_ids=sequence_positions(positions[0][:, rows], mask))
