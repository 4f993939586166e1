"""What each image token of a shapes image shows: the targets of the vision tower's pre-training.

A real Qwen2.5-VL's vision tower comes pretrained; tiny:<size>'s is random, and its features,
though image-dependent, entangle colour, kind and place so that a 4-layer language model learns to
read little of them in a few thousand warm-up steps (and, trained along, the tower collapses).
``toyworld.vision_pretrain.VisionPretrain`` therefore pre-trains the tower and its merger first,
the way dense-prediction heads are trained: each merged image token (a 28 x 28 pixel block,
row-major, as the Qwen2.5-VL merger orders them) predicts, with a linear head, the colours and
kinds of the shapes that cover its block, and those of the shape whose centre lies in it.

Targets are read off the scene and its rendering, so they are exact; like the records, each item
is a pure function of (seed, split, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from toyworld import tally
from toyworld.scene import BACKGROUND, COLOURS, KINDS, Scene, render
from toyworld.shapes import make_record
from toyworld.sources import ShapesSource, TallySource

NAMES = [*sorted(COLOURS), *KINDS]  # 10 attributes: a shape has one colour and one kind
CHANNELS = 2 * len(NAMES)  # a shape with it covers the block; has its centre in the block
BLOCK = 28  # pixels per merged image token side (14-pixel patches, merged 2 x 2)
MIN_COVER = 0.05  # share of a block a shape must cover to count as "covers"


def token_targets(scene: Scene, size: int) -> Tensor:
    """(tokens, CHANNELS) 0/1 targets of a ``size`` x ``size`` rendering of ``scene``: channel a
    is "a shape with attribute a (a colour or a kind) covers >= MIN_COVER of the block", channel
    10 + a "the centre of a shape with attribute a is in the block"."""
    if size % BLOCK:
        raise ValueError(f"image side {size} is not a multiple of {BLOCK} pixels")
    n = size // BLOCK
    targets = torch.zeros(n, n, CHANNELS)
    for shape in scene.shapes:
        pixels = np.asarray(render(Scene((shape,)), size))
        mask = (pixels != np.array(BACKGROUND, dtype=pixels.dtype)).any(-1)
        cover = mask.reshape(n, BLOCK, n, BLOCK).mean(axis=(1, 3))  # (n, n)
        row, col = min(int(shape.cy * n), n - 1), min(int(shape.cx * n), n - 1)
        for a in (NAMES.index(shape.colour), NAMES.index(shape.kind)):
            targets[..., a] = torch.maximum(targets[..., a],
                                            torch.from_numpy(cover >= MIN_COVER).float())
            targets[row, col, len(NAMES) + a] = 1.0
    return targets.view(n * n, CHANNELS)


@dataclass(frozen=True)
class PerceptionBatch:
    images: list[Image.Image]  # (B,)
    targets: Tensor  # (B * tokens, CHANNELS), the images' tokens in order


class PerceptionDataset(Dataset):
    """Record i of a ``shapes:`` source: its image and its tokens' targets. ``words`` and
    ``word_weights`` name each channel for ``VisionPretrain``'s alignment with word embeddings:
    a token's target is "<colour> <kind>" at full weight where a shape's centre is, half where
    it only covers the block."""

    words = NAMES + NAMES
    word_weights = [0.5] * len(NAMES) + [1.0] * len(NAMES)

    def __init__(self, source: ShapesSource):
        self.source = source

    def __len__(self) -> int:
        return self.source.n

    def __getitem__(self, index: int) -> tuple[Image.Image, Tensor]:
        s = self.source
        record = make_record(s.seed, s.split, index, s.size)
        return record.image, token_targets(record.scene, s.size)


def _collate(items: list[tuple[Image.Image, Tensor]]) -> PerceptionBatch:
    return PerceptionBatch([image for image, _ in items], torch.cat([t for _, t in items]))


class TallyPerceptionDataset(Dataset):
    """Record i of a ``tally:`` source: its image and its tokens' targets
    (``toyworld.tally.token_targets``: each token's cell, and the colour and kind it shows),
    each channel a word for the alignment with word embeddings."""

    words = list(tally.TOKEN_WORDS)
    word_weights = [1.0] * len(tally.TOKEN_WORDS)

    def __init__(self, source: TallySource):
        self.source = source

    def __len__(self) -> int:
        return self.source.n

    def __getitem__(self, index: int) -> tuple[Image.Image, Tensor]:
        s = self.source
        record = tally.make_record(s.seed, s.split, index, s.level, s.size)
        return record.image, tally.token_targets(record, s.size)


def perception_loader(source: ShapesSource | TallySource, batch_size: int) -> DataLoader:
    """Batches of images and their tokens' targets, in order (every record is a fresh scene)."""
    dataset = TallyPerceptionDataset(source) if isinstance(source, TallySource) \
        else PerceptionDataset(source)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=_collate)
