"""The fixed recipes behind ``warm:<name>`` (``toyworld.warmup`` builds them): light to import,
so registering the names costs nothing."""

from __future__ import annotations

from dataclasses import dataclass

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


RECIPES: dict[str, WarmRecipe] = {
    # tests only: checks the plumbing in seconds, learns little
    "tiny": WarmRecipe(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, minutes=0.1,
                       max_pixels=56 * 56, base="tiny", vision_steps=4, vision_batch_size=8),
    # The default (configs/tiny.yaml): the vision tower pre-trained first (VisionPretrain on
    # toyworld.perception's per-token colour and kind targets), then the language model on
    # 90% clean traces. The search (greedy / maj@8 at T = 1 on 256 shapes:val records, the
    # language model's 1500 steps unless said): random tower (small-v3) 0.422 / 0.398; tower
    # pre-trained 400 steps 0.477 / 0.484 (128 records), 1200 steps 0.484 / 0.449, and with
    # 2000 language-model steps 0.480 / 0.480, or lr 1.2e-3 0.461 / 0.441; aligned with the word
    # embeddings 0.508 / 0.504; 90% clean traces 0.520 / 0.535, aligned and 90% clean 0.508 /
    # 0.461; 168-pixel images (36 image tokens) 0.531 / 0.512, built in 8.1 min (over the 6-minute
    # budget). Training the merger or the whole tower along with the language model collapsed it
    # (0.344 and 0.352, answers independent of the image). Counting and positions stay near the
    # blank-image level in every variant: the language model copies the question's words.
    # On 1024 val records (greedy; this recipe 0.564): tower also predicting the scene's counts
    # 0.508; count steps worded noun first ("circles 2") 0.543; 2250 language-model steps after
    # 400 tower steps 0.549; this recipe + 750 steps at lr 3e-4 0.590 (held-out greedy 0.565,
    # maj@8 0.556 < greedy; built in 8.3 min). README "The warm starts" has the details.
    "small": WarmRecipe(steps=1500, batch_size=8, lr=7e-4, warmup_steps=30, minutes=7,
                        vision_steps=800, clean=0.9),
    # The earlier warm start, kept as the case where label-free training's premise fails: a
    # random vision tower, standardized (greedy 41% on 128 shapes:val records against 31% with
    # blank images; maj@8 at T = 1 below greedy). Without the standardized vision features, or
    # with 600 steps, answers did not depend on the image (32-34%, real = blank).
    "small-v3": WarmRecipe(steps=1500, batch_size=8, lr=7e-4, warmup_steps=30, minutes=5,
                           version=3),
}


