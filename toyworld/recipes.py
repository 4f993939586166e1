"""The fixed recipes behind ``warm:<name>`` (``toyworld.warmup`` builds them): light to import,
so registering the names costs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from srmcr import prompts

VERSION = 4  # bump when the warm-up changes what a warm:<name> build contains (keys its cache)


@dataclass(frozen=True)
class WarmRecipe:
    """The fixed warm-up behind ``warm:<size>`` (configs/tiny_warmup.yaml spells out the small
    one as a config)."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    minutes: float  # measured on 2 shared CPU cores, for the log line
    beta2: float = 0.95
    max_pixels: int = 112 * 112  # the tiny configs' image size: 16 image tokens
    vision_scale: float | None = 4.0  # WarmupModule's: standardized vision features
    system_prompt: str = prompts.TINY_SYSTEM_PROMPT  # configs/tiny.yaml's, which rollouts use
    seed: int = 0
    base: str = "small"  # the tiny:<base> it starts from
    version: int = VERSION  # keys the cache folder: warm-<base>-v<version>.<data version>
    vision_steps: int = 0  # pre-training steps of the vision tower first (0: keep it random)
    vision_batch_size: int = 32
    vision_lr: float = 3e-3
    vision_align: bool = False  # align the tower with the word embeddings (VisionPretrain words)
    clean: float = 0.6  # share of clean traces among the warm-up's (the rest carry one flaw)
    world: Literal["shapes", "tally"] = "shapes"  # whose traces and perception targets it learns

    @property
    def folder(self) -> str:
        """The cache folder's name, without the data version (``warmup.cached`` adds it)."""
        world = "" if self.world == "shapes" else f"{self.world}-"
        return f"warm-{world}{self.base}-v{self.version}"


RECIPES: dict[str, WarmRecipe] = {
    # tests only: checks the plumbing in seconds, learns little
    "tiny": WarmRecipe(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, minutes=0.1,
                       max_pixels=56 * 56, base="tiny", vision_steps=4, vision_batch_size=8),
    # The default (configs/tiny.yaml): the vision tower pre-trained first (VisionPretrain on
    # toyworld.perception's per-token colour and kind targets), the way a real VLM's tower comes
    # pretrained, then the language model on 90% clean traces. docs/warm_starts.md has the
    # search that chose it and the candidates not adopted.
    "small": WarmRecipe(steps=1500, batch_size=8, lr=7e-4, warmup_steps=30, minutes=7,
                        vision_steps=800, clean=0.9),
    # The earlier warm start, kept as the case where label-free training's premise fails
    # (maj@8 below greedy): a random vision tower, its features standardized so that the
    # language model reads them at all (docs/warm_starts.md).
    "small-v3": WarmRecipe(steps=1500, batch_size=8, lr=7e-4, warmup_steps=30, minutes=5,
                           version=3),
}


