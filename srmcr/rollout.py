"""Sampling G completions per prompt into a typed ``Rollout``.

Shape letters: B prompts, G completions per prompt, N = B*G, P prompt tokens, T completion tokens.
Completions of one prompt are contiguous (``x.view(B, G, ...)`` holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from srmcr.parsing import Parsed


@dataclass
class Rollout:
    """Everything one step knows about its completions. Tensors live on the policy's device."""

    group_size: int  # G
    questions: list[str]  # (N,) the question of each completion, repeated G times
    texts: list[str]  # (N,) decoded completions, special tokens removed
    parsed: list[Parsed]  # (N,) parsing.parse(text)
    prompt_ids: Tensor  # (N, P) left-padded
    prompt_mask: Tensor  # (N, P)
    completion_ids: Tensor  # (N, T) right-padded with pad_token_id
    completion_mask: Tensor  # (N, T) 1 on sampled tokens up to and including <|im_end|>
    truncated: Tensor  # (N,) bool: hit max_new_tokens without <|im_end|>
    temperature: float  # the sampling temperature of this step
    ids: list[str] = field(default_factory=list)  # (N,) record ids, for error messages
    # Vision inputs for the N rows (pixel_values stacked per row's image, grid per row).
    pixel_values: Tensor | None = None  # (sum of patches over N, D)
    image_grid_thw: Tensor | None = None  # (N, 3)
    mm_token_type_ids: Tensor | None = None  # (N, P) 1 on image tokens
    # Filled by the module's log-prob passes (no grad), at T = 1:
    logp: Tensor | None = None  # (N, T) log pi(token | image)
    blank_logp: Tensor | None = None  # (N, T) log pi(token | blank image); only if a cue needs it
    max_prob: Tensor | None = None  # (N, T) max softmax probability (confidence)

    @property
    def num_groups(self) -> int:
        return len(self.texts) // self.group_size

    @property
    def well_formed(self) -> Tensor:  # (N,) float
        return torch.tensor([p.well_formed for p in self.parsed], dtype=torch.float32)
