"""Test doubles: a counting bag-of-words encoder and a Rollout builder."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from srmcr.encoder import TextEncoder
from srmcr.parsing import parse
from srmcr.rollout import Rollout


class HashingEncoder(TextEncoder):
    """E(x) = hashed bag of lower-cased words: cosines are hand-computable word overlaps.

    ``calls`` records every list of texts that reached the "model".
    """

    def __init__(self, dim: int = 4096) -> None:
        super().__init__(model="hashing-bag-of-words")
        self.size = dim
        self.calls: list[list[str]] = []

    def _encode(self, texts: list[str]) -> Tensor:  # (M, D), normalized by TextEncoder
        self.calls.append(list(texts))
        out = torch.zeros(len(texts), self.size)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, zlib.crc32(word.encode()) % self.size] += 1.0
        return out

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def make_rollout(questions: Sequence[str], texts: Sequence[str], group_size: int = 1,
                 logp: Tensor | None = None, mask: Tensor | None = None,
                 answer_mask: Tensor | None = None) -> Rollout:
    n = len(texts)
    mask = mask if mask is not None else torch.ones(n, 4, dtype=torch.long)
    return Rollout(
        group_size=group_size, questions=list(questions), texts=list(texts),
        parsed=[parse(t) for t in texts], prompt_ids=torch.zeros(n, 2, dtype=torch.long),
        prompt_mask=torch.ones(n, 2, dtype=torch.long),
        mm_token_type_ids=torch.zeros(n, 2, dtype=torch.long),
        completion_ids=torch.zeros_like(mask), completion_mask=mask,
        truncated=torch.zeros(n, dtype=torch.bool), temperature=1.0, images=[],
        pixel_values=torch.zeros(0, 1), image_grid_thw=torch.zeros(0, 3, dtype=torch.long),
        logp=logp, answer_mask=answer_mask)
