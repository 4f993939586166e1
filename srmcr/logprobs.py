"""Per-token log-probabilities of sampled completions, in micro-batches of sequences.

Only the completion's logits are materialised (``logits_to_keep``): full logits over Qwen's
151k vocabulary would cost about 1 GB per step on the real model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageStat
from torch import Tensor

from srmcr.prefix import (
    cache_through_checkpoints,
    language_core,
    output_head,
    prompt_groups,
    prompt_record,
    repeated,
    shares_under_checkpointing,
)
from srmcr.rollout import Rollout, eval_mode, image_inputs


@dataclass
class TokenLogProbs:
    logp: Tensor | None  # (N, T) log pi(token) at the sampling temperature (ratio and KL)
    logp_t1: Tensor | None  # (N, T) log pi(token) at T = 1 (cues)
    max_prob: Tensor | None  # (N, T) max softmax probability at T = 1 (confidence)


def completion_logits(model, rollout: Rollout, rows: slice,
                      pixel_values: Tensor | None = None, *,
                      share_prompt: bool | None = None) -> Tensor:
    """(n, T, V) logits that predict each completion token of ``rows``.

    ``pixel_values`` replaces the rollout's images (same sizes), e.g. with blank images. The
    rollout's own images are not run through the vision tower again where the sampler kept its
    output (``rollout.image_features``; the tower is frozen).

    ``share_prompt`` (default: whenever it is exact and saves work) runs each distinct prompt of
    ``rows`` once and its completions on top of the prompt's keys and values, instead of the
    prompt (~3/4 of each sequence on the shapes world, and the image through the vision tower)
    once per completion. Same logits to float rounding, gradients included: the prompt's
    activations are shared by the G rows of its group, and the gradient of every row flows
    into them. Under gradient checkpointing both forwards stay checkpointed (``srmcr.prefix``).
    It is off when no two rows share a prompt (G = 1), and in a training-mode forward under
    checkpointing that cannot keep the prompt's gradient (``shares_under_checkpointing``).
    """
    indices = torch.arange(len(rollout), device=rollout.prompt_ids.device)[rows]
    prompt_of = indices // rollout.group_size
    prompts, counts, heads = prompt_groups(indices, rollout.group_size)
    if share_prompt is None:
        share_prompt = len(prompts) < len(indices) and (
            not model.training or shares_under_checkpointing(model))
    completion = rollout.completion_ids[rows]
    ids = torch.cat([rollout.prompt_ids[rows], completion], dim=1)
    mask = torch.cat([rollout.prompt_mask[rows], rollout.completion_mask[rows]], dim=1)
    mm_types = torch.cat([rollout.mm_token_type_ids[rows], torch.zeros_like(completion)], dim=1)
    width = completion.shape[1]
    source = rollout.pixel_values if pixel_values is None else pixel_values
    # Rope positions of the whole sequences (mrope: the image's tokens have 3-D positions, the
    # text after it continues from their maximum): the sampler's, else as the model numbers them.
    positions = rollout.position_ids[:, rows] if rollout.position_ids is not None else \
        language_core(model).get_rope_index(ids, mm_token_type_ids=mm_types, attention_mask=mask,
                                            image_grid_thw=rollout.image_grid_thw[prompt_of])[0]
    if not share_prompt:
        images = image_inputs(source, rollout.image_grid_thw, prompt_of, rollout.image_features)
        out = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm_types, **images,
                    position_ids=positions, logits_to_keep=width + 1, use_cache=False)
        return out.logits[:, :-1].float()
    P = rollout.prompt_ids.shape[1]
    images = image_inputs(source, rollout.image_grid_thw, prompts, rollout.image_features)
    core, cache = language_core(model), prompt_record()
    with cache_through_checkpoints(model):
        prefix = core(input_ids=ids[heads, :P], attention_mask=mask[heads, :P],
                      mm_token_type_ids=mm_types[heads, :P], **images,
                      position_ids=positions[:, heads, :P], cache=cache, use_cache=True)
        out = core(input_ids=completion, attention_mask=mask, position_ids=positions[:, :, P:],
                   cache=repeated(cache, counts), use_cache=True)
    # The prompt's last position predicts the first completion token. One head call for both:
    # under autocast each call keeps its own half-precision copy of the head's weight (V x H).
    hidden = torch.cat([prefix.last_hidden_state[:, -1:].repeat_interleave(counts, dim=0),
                        out.last_hidden_state[:, :-1]], dim=1)
    return output_head(model)(hidden).float()


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """(n, T) log-softmax(logits / temperature) of the given token ids."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def rollout_logprobs(model, rollout: Rollout, micro_batch_size: int,
                     pixel_values: Tensor | None = None, *, at_temperature: bool = True,
                     at_t1: bool = True, max_prob: bool = False) -> TokenLogProbs:
    """One no-grad pass over the rollout: log-probs at its temperature and/or at T = 1, and
    with ``max_prob`` the max probability at T = 1. Each costs a pass over the vocabulary: ask
    only for what is used (the reference pass needs the first two, the blank-image pass only
    the second; the sampler already recorded the rollout's own confidence).

    The T = 1 values exclude the tokens the sampler suppresses, as the sampler's own
    ``rollout.logp`` does, so the two compare token by token (visual grounding).
    """
    parts: dict[str, list[Tensor]] = {"logp": [], "logp_t1": [], "max_prob": []}
    suppressed = torch.tensor(rollout.suppressed, dtype=torch.long,
                              device=rollout.completion_ids.device)
    # Eval mode as the sampler: no dropout.
    with eval_mode(model):
        for start in range(0, len(rollout), micro_batch_size):
            rows = slice(start, start + micro_batch_size)
            logits = completion_logits(model, rollout, rows, pixel_values)
            ids = rollout.completion_ids[rows]
            if at_temperature:
                parts["logp"].append(token_logprobs(logits, ids, rollout.temperature))
            if at_t1 or max_prob:
                logp1 = torch.log_softmax(logits.index_fill(-1, suppressed, float("-inf")), dim=-1)
                if at_t1:
                    parts["logp_t1"].append(logp1.gather(-1, ids.unsqueeze(-1)).squeeze(-1))
                if max_prob:
                    parts["max_prob"].append(logp1.max(dim=-1).values.exp())
                del logp1
            del logits
    return TokenLogProbs(**{k: torch.cat(v) if v else None for k, v in parts.items()})


def mean_colour_blank(image: Image.Image) -> Image.Image:
    """The blank visual grounding compares with: ``image``'s size, filled with its mean colour."""
    return Image.new("RGB", image.size,
                     tuple(round(c) for c in ImageStat.Stat(image.convert("RGB")).mean))


def blank_pixel_values(processor, rollout: Rollout) -> Tensor:
    """Pixel values of blank images: same size as each prompt's image, filled with its mean
    colour."""
    blanks = [mean_colour_blank(im) for im in rollout.images]
    out = processor.image_processor(images=blanks, return_tensors="pt")
    if not torch.equal(out["image_grid_thw"].to(rollout.image_grid_thw.device),
                       rollout.image_grid_thw):
        raise RuntimeError("blank images were resized differently from the originals")
    return out["pixel_values"].to(rollout.pixel_values)
