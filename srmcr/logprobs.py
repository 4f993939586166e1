"""Per-token log-probabilities of sampled completions, in micro-batches of sequences.

Only the completion's logits are materialised (``logits_to_keep``): full logits over Qwen's
151k vocabulary would cost about 1 GB per step on the real model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, ImageStat
from torch import Tensor

from srmcr.rollout import Rollout, select_images


@dataclass
class TokenLogProbs:
    logp: Tensor | None  # (N, T) log pi(token) at the sampling temperature (ratio and KL)
    logp_t1: Tensor | None  # (N, T) log pi(token) at T = 1 (cues)
    max_prob: Tensor | None  # (N, T) max softmax probability at T = 1 (confidence)


def completion_logits(model, rollout: Rollout, rows: slice,
                      pixel_values: Tensor | None = None) -> Tensor:
    """(n, T, V) logits that predict each completion token of ``rows``.

    ``pixel_values`` replaces the rollout's images (same sizes), e.g. with blank images.
    """
    completion = rollout.completion_ids[rows]
    ids = torch.cat([rollout.prompt_ids[rows], completion], dim=1)
    mask = torch.cat([rollout.prompt_mask[rows], rollout.completion_mask[rows]], dim=1)
    mm_types = torch.cat([rollout.mm_token_type_ids[rows], torch.zeros_like(completion)], dim=1)
    images = torch.arange(len(rollout), device=ids.device)[rows] // rollout.group_size
    pixels, grid = select_images(
        rollout.pixel_values if pixel_values is None else pixel_values,
        rollout.image_grid_thw, images)
    width = completion.shape[1]
    out = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm_types,
                pixel_values=pixels, image_grid_thw=grid, logits_to_keep=width + 1,
                use_cache=False)
    return out.logits[:, :-1].float()


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0) -> Tensor:
    """(n, T) log-softmax(logits / temperature) of the given token ids."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def rollout_logprobs(model, rollout: Rollout, micro_batch_size: int,
                     pixel_values: Tensor | None = None, *, at_temperature: bool = True,
                     at_t1: bool = True) -> TokenLogProbs:
    """One no-grad pass over the rollout: log-probs at its temperature and/or, with the max
    probability, at T = 1. Each costs a log-softmax over the vocabulary: ask only for what is
    used (the reference pass needs only the first, the blank-image pass only the second).

    The T = 1 values exclude the tokens the sampler suppresses, as the sampler's own
    ``rollout.logp`` does, so the two compare token by token (visual grounding).
    """
    parts: dict[str, list[Tensor]] = {"logp": [], "logp_t1": [], "max_prob": []}
    suppressed = torch.tensor(rollout.suppressed, dtype=torch.long,
                              device=rollout.completion_ids.device)
    for start in range(0, len(rollout), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        logits = completion_logits(model, rollout, rows, pixel_values)
        ids = rollout.completion_ids[rows]
        if at_temperature:
            parts["logp"].append(token_logprobs(logits, ids, rollout.temperature))
        if at_t1:
            logp1 = torch.log_softmax(logits.index_fill(-1, suppressed, float("-inf")), dim=-1)
            parts["logp_t1"].append(logp1.gather(-1, ids.unsqueeze(-1)).squeeze(-1))
            parts["max_prob"].append(logp1.max(dim=-1).values.exp())
            del logp1
        del logits
    return TokenLogProbs(**{k: torch.cat(v) if v else None for k, v in parts.items()})


def blank_pixel_values(processor, rollout: Rollout) -> Tensor:
    """Pixel values of blank images: same size as each prompt's image, filled with its mean colour."""
    blanks = [Image.new("RGB", im.size, tuple(round(c) for c in ImageStat.Stat(im.convert("RGB")).mean))
              for im in rollout.images]
    out = processor.image_processor(images=blanks, return_tensors="pt")
    if not torch.equal(out["image_grid_thw"].to(rollout.image_grid_thw.device),
                       rollout.image_grid_thw):
        raise RuntimeError("blank images were resized differently from the originals")
    return out["pixel_values"].to(rollout.pixel_values)
