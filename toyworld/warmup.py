"""Supervised warm-up: teach a small Qwen2.5-VL the output format and the task from traces.

Label-free training can only show that it helps if the starting model answers at all; a randomly
initialised ``tiny:<size>`` never writes ``<answer>``. ``WarmupModule`` fine-tunes the whole
language model by teacher forcing on reasoning traces, with the very prompt that rollouts use, and
saves a full model folder (weights + processor) that ``load_policy`` loads like any other.
``cached`` runs a fixed recipe once and caches the result, which is what the model spec
``warm:<name>`` names (registered in ``toyworld.sources``; shipped ones in ``toyworld.ship``).

The traces come from a DataModule whose batches have ``images``, ``questions``, ``completions``
(the target text after the assistant header) and, for validation, ``answers``. srmcr/ knows
nothing of the shapes world: ``toyworld.traces.TraceDataModule`` writes those traces.

Why a full fine-tune and not LoRA: the base is random, so there is no pretrained function for a
low-rank update to adjust, and at 4M parameters all weights train about as fast as an adapter.
SR-MCR then puts its LoRA adapter on top of the warmed-up weights. Why the vision tower stays
frozen by default: trained along, the random tiny tower collapses to one large near-constant
output per image, which erases what SR-MCR's LoRA, on the language model only, could later learn
to read. Frozen as they are, though, the random tower's features are nearly the same for every
image, and the language model learns to ignore them. ``vision_scale`` standardizes them once,
before training (``standardize_merger``), as a pretrained tower's features would be; that is
warm:small-v3. warm:small goes further: it first pre-trains the tower
(``toyworld.vision_pretrain``), then freezes it for the warm-up. The measurements behind each of
these choices: docs/warm_starts.md.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import Qwen2_5_VLForConditionalGeneration

from srmcr import evaluation, prompts
from srmcr.errors import ConfigError
from srmcr.logprobs import completion_logits, token_logprobs
from srmcr.parsing import parse
from srmcr.policy import PolicyArgs, load_processor, resolve_model
from srmcr.rollout import Rollout, SamplingArgs, end_token_ids
from srmcr.sources import DEFAULT_CACHE, build_atomically
from toyworld import tiny
from toyworld.recipes import RECIPES, WarmRecipe


def teacher_forced(processor, images: Sequence[Image.Image], questions: Sequence[str],
                   completions: Sequence[str], system_prompt: str = prompts.SYSTEM_PROMPT,
                   ids: Sequence[str] | None = None) -> Rollout:
    """The given completions as a ``Rollout`` (G = 1), padded like sampled ones.

    Prompts are rendered and left-padded exactly as ``rollout.sample`` does; each completion is
    its text's tokens plus ``<|im_end|>`` (so the model learns to stop), right-padded and masked,
    which is what ``completion_logits`` expects.
    """
    tokenizer = processor.tokenizer
    enc = processor(text=prompts.render(processor, questions, system_prompt), images=list(images),
                    return_tensors="pt", padding=True)
    end, pad = end_token_ids(tokenizer)
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"] + [end] for c in completions]
    width = max(len(r) for r in rows)
    completion_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return Rollout(
        group_size=1, questions=list(questions), texts=list(completions),
        parsed=[parse(c) for c in completions], prompt_ids=enc["input_ids"],
        prompt_mask=enc["attention_mask"], mm_token_type_ids=enc["mm_token_type_ids"],
        completion_ids=completion_ids, completion_mask=mask,
        truncated=torch.zeros(len(rows), dtype=torch.bool), temperature=1.0, images=list(images),
        pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
        ids=list(ids or [str(i) for i in range(len(rows))]))


def completion_nll(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the completion tokens where ``mask`` is 1 (token-level).

    logits (N, T, V) predict ids (N, T); the prompt never enters (``completion_logits`` keeps
    only the completion's logits) and right padding has mask 0.
    """
    nll = -token_logprobs(logits, ids)  # (N, T)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to ``floor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _adamw(params) -> torch.optim.Optimizer:
    # A lower beta2 and a moderate lr: on toy tasks with tiny:small, a higher lr or the default
    # beta2 learned nothing in the same steps (docs/warm_starts.md).
    return torch.optim.AdamW(params, lr=7e-4, betas=(0.9, 0.95), weight_decay=0.0)


class WarmupModule(L.LightningModule):
    """Supervised warm-up on reasoning traces: full fine-tune of the language model, loss on the
    completion tokens only.

    Args:
        policy: The model to start from and its processor's pixel caps. The warm-up trains full
            weights, so ``policy.lora`` does not apply and ``policy.quantization`` must be none.
        sampling: Its system prompt (the same as rollouts) and, for validation, the greedy
            completion length.
        train_vision: Also train the vision tower (off: see the module docstring).
        vision_scale: At the start of a fresh fit, standardize the vision tower's output
            features (per dimension, over the images of ``calibration_batches`` training
            batches) and scale them to ``vision_scale`` x the std of the text embeddings, folded
            into the merger's last layer (``standardize_merger``). None = off.
        calibration_batches: Training batches whose images the standardization measures.
        warmup_steps: Linear LR warm-up steps; then cosine decay to ``min_lr_ratio`` at
            ``trainer.max_steps``.
        min_lr_ratio: Final LR as a share of the optimizer's LR.
        export: Folder for the final model + processor; default ``<log_dir>/model``.
        optimizer: Optimizer over all trainable weights.
    """

    def __init__(self, policy: PolicyArgs = PolicyArgs(), sampling: SamplingArgs = SamplingArgs(),
                 train_vision: bool = False, vision_scale: float | None = None,
                 calibration_batches: int = 64, warmup_steps: int = 30,
                 min_lr_ratio: float = 0.1, export: Path | None = None,
                 optimizer: OptimizerCallable = _adamw) -> None:
        super().__init__()
        if policy.quantization != "none":
            raise ConfigError("the warm-up trains full weights: set policy.quantization=none "
                              f"(got {policy.quantization})")
        if warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ConfigError(f"warmup_steps must be >= 0 and min_lr_ratio in [0, 1] (got "
                              f"{warmup_steps}, {min_lr_ratio})")
        if (vision_scale is not None and vision_scale <= 0) or calibration_batches < 1:
            raise ConfigError(f"vision_scale must be > 0 (or null) and calibration_batches >= 1 "
                              f"(got {vision_scale}, {calibration_batches})")
        self.save_hyperparameters({"policy": asdict(policy), "sampling": asdict(sampling),
                                   "train_vision": train_vision, "vision_scale": vision_scale})
        self.vision_scale, self.calibration_batches = vision_scale, calibration_batches
        self.policy_args, self.sampling = policy, sampling
        self.train_vision = train_vision
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.export = None if export is None else Path(export)
        self.optimizer_factory = optimizer
        self.model: Qwen2_5_VLForConditionalGeneration | None = None
        self.processor = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        args = self.policy_args
        path = resolve_model(args.model)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, dtype=getattr(torch, args.dtype), attn_implementation=args.attn_implementation)
        self.processor = load_processor(args, path)
        if args.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.model.visual.requires_grad_(self.train_vision)
        self.model.train()
        self.eval_metrics = evaluation.EvalMetrics()

    def on_fit_start(self) -> None:
        # Not when resuming: the checkpoint's merger is standardized already.
        if self.vision_scale is None or self.trainer.ckpt_path is not None:
            return
        features = [self.image_features(batch.images) for batch in
                    itertools.islice(self.trainer.datamodule.train_dataloader(),
                                     self.calibration_batches)]
        target = self.vision_scale * self.model.get_input_embeddings().weight.std().item()
        last = self.model.model.visual.merger.mlp[-1]
        standardize_merger(self.model.model.visual.merger, torch.cat(features), target)
        # Ranks saw different images: all take rank 0's (the frozen merger is not synced by DDP).
        weight, bias = self.trainer.strategy.broadcast((last.weight.data, last.bias.data), src=0)
        last.weight.data.copy_(weight)
        last.bias.data.copy_(bias)
        rank_zero_info(f"vision features standardized over {sum(len(f) for f in features)} "
                       f"image tokens, std {target:.3g} per dimension")

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> Tensor:
        """(image tokens, hidden) outputs of the vision tower's merger for ``images``."""
        enc = self.processor.image_processor(images=list(images), return_tensors="pt")
        visual = self.model.model.visual
        out = visual(enc["pixel_values"].to(self.device, visual.dtype),
                     grid_thw=enc["image_grid_thw"].to(self.device)).pooler_output
        return torch.cat(list(out)) if isinstance(out, (list, tuple)) else out

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else \
            self.trainer.estimated_stepping_batches
        schedule = partial(warmup_cosine, warmup_steps=self.warmup_steps, total_steps=int(total),
                           floor=self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

    def forced(self, batch) -> Rollout:
        return teacher_forced(self.processor, batch.images, batch.questions, batch.completions,
                              self.sampling.system_prompt, getattr(batch, "ids", None))

    def loss(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """Completion cross-entropy and next-token accuracy (teacher forced)."""
        rollout = _to(rollout, self.device)
        logits = completion_logits(self.model, rollout, slice(None))
        mask = rollout.completion_mask
        hits = (logits.detach().argmax(-1) == rollout.completion_ids).float()
        accuracy = (hits * mask).sum() / mask.sum().clamp(min=1)
        return completion_nll(logits, rollout.completion_ids, mask), accuracy

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, accuracy = self.loss(self.forced(batch))
        B = len(batch.questions)
        self.log_dict({"train/loss": loss.detach(), "train/token_accuracy": accuracy},
                      on_step=True, batch_size=B)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, on_step=True, batch_size=B)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, accuracy = self.loss(self.forced(batch))
        B = len(batch.questions)
        self.log_dict({"val/loss": loss, "val/token_accuracy": accuracy}, batch_size=B)
        rollout = evaluation.generate_greedy(self.model, self.processor, batch.images,
                                             batch.questions, self.sampling, ids=batch.ids)
        self.eval_metrics.update(rollout, batch.answers)

    def on_validation_epoch_end(self) -> None:
        stats = evaluation.eval_log_dict("val", self.eval_metrics.compute(), {})
        self.eval_metrics.reset()
        self.log_dict(stats, batch_size=1, prog_bar=False)

    def on_fit_end(self) -> None:
        out = self.export or Path(self.trainer.log_dir or ".") / "model"
        if self.trainer.is_global_zero:
            self.save(out)
            rank_zero_info(f"warm-up model (weights + processor) saved to {out}")

    def save(self, out: Path) -> Path:
        """Write the model and its processor to ``out`` (loadable by ``load_policy``)."""
        out.mkdir(parents=True, exist_ok=True)
        self.model.config.use_cache = True
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        return out


@torch.no_grad()
def standardize_merger(merger: torch.nn.Module, features: Tensor, std: float) -> None:
    """Fold ``(x - mean) / sd * std`` per output dimension, with the mean and sd of
    ``features`` (the merger's outputs on calibration images), into the merger's last Linear.

    Why: a random vision tower's features are nearly the same for every image. A probe reads
    them, but the language model, which sees them beside text embeddings, learns to ignore them
    (docs/warm_starts.md). Standardized, they are image-dependent at the text embeddings' scale,
    as a pretrained tower's would be."""
    last = merger.mlp[-1]
    mean, sd = features.mean(0), features.std(0).clamp(min=1e-6)
    last.weight.mul_((std / sd)[:, None])
    last.bias.copy_((last.bias - mean) / sd * std)


def _to(rollout: Rollout, device: torch.device) -> Rollout:
    """A copy of ``rollout`` with its tensors on ``device`` (a rollout is immutable)."""
    return replace(rollout, **{name: getattr(rollout, name).to(device) for name in (
        "prompt_ids", "prompt_mask", "mm_token_type_ids", "completion_ids", "completion_mask",
        "pixel_values", "image_grid_thw")})


# ---- warm:<name>: a fixed recipe, built once and cached ------------------------------------
@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch inside, and give the caller its own RNG states back after:
    a run that builds warm:<size> first must draw the same numbers as one that finds it cached."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _progress(shown: bool, label: str) -> list[L.Callback]:
    """A bar of the steps done (the builds take minutes), in a terminal or a log file alike."""
    from callbacks.progress import StepProgressBar

    return [StepProgressBar(label)] if shown else []


def pretrain_vision(base: str, out: Path, loader: DataLoader, recipe: WarmRecipe,
                    progress: bool = True, label: str = "vision tower") -> Path:
    """``VisionPretrain`` on ``loader`` for ``recipe.vision_steps``: the model folder ``base``
    with its vision tower (and merger) trained, written to ``out``."""
    from toyworld.vision_pretrain import VisionPretrain

    batch = next(iter(loader))
    words = {"words": loader.dataset.words, "word_weights": loader.dataset.word_weights} \
        if recipe.vision_align else {}
    module = VisionPretrain(base, batch.targets.shape[-1], recipe.max_pixels, recipe.vision_lr,
                            **words)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=recipe.vision_steps,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress,
                        callbacks=_progress(progress, label))
    trainer.fit(module, train_dataloaders=loader)
    return module.save(out)


def build(name: str, out: Path, data: L.LightningDataModule, cache_dir: Path = DEFAULT_CACHE,
          progress: bool = True, recipe: WarmRecipe | None = None,
          vision_data: DataLoader | None = None) -> Path:
    """Warm ``tiny:<recipe.base>`` up with ``recipe`` (default ``RECIPES[name]``) and save it to
    ``out``: first its vision tower on ``vision_data`` (when ``recipe.vision_steps``), then the
    language model on ``data``."""
    recipe = recipe or RECIPES[name]
    if recipe.vision_steps and vision_data is None:
        raise ValueError(f"warm:{name} pre-trains the vision tower: pass vision_data")
    with _seeded(recipe.seed), tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        base = str(tiny.cached(recipe.base, cache_dir))  # type: ignore[arg-type]
        if recipe.vision_steps:
            base = str(pretrain_vision(base, Path(scratch) / "vision", vision_data, recipe,
                                       progress, label=f"warm:{name}: vision tower"))
        module = WarmupModule(
            policy=PolicyArgs(model=base, max_pixels=recipe.max_pixels),
            sampling=SamplingArgs(system_prompt=recipe.system_prompt),
            vision_scale=recipe.vision_scale, warmup_steps=recipe.warmup_steps, export=out,
            optimizer=partial(torch.optim.AdamW, lr=recipe.lr, betas=(0.9, recipe.beta2),
                              weight_decay=0.0))
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=recipe.steps, logger=False,
                            enable_checkpointing=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0,
                            enable_progress_bar=progress,
                            callbacks=_progress(progress, f"warm:{name}: language model"))
        trainer.fit(module, datamodule=data)
    return out


def cached(name: str, cache_dir: Path, data: Callable[[WarmRecipe], L.LightningDataModule],
           data_version: int | str,
           vision_data: Callable[[WarmRecipe], DataLoader] | None = None) -> Path:
    """The folder of ``warm:<name>``, built once (``build``); concurrent builders race safely by
    rename. ``data`` makes the recipe's DataModule, ``vision_data`` the loader of its vision
    pre-training; ``data_version`` keys the cache with them."""
    if name not in RECIPES:
        raise ValueError(f"unknown warm model {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    final = cache_dir / f"{recipe.folder}.{data_version}"
    if (final / "config.json").exists():
        return final
    vision = f" after {recipe.vision_steps} of the vision tower" if recipe.vision_steps else ""
    rank_zero_info(f"building warm:{name} (one-time, ~{recipe.minutes:g} min on 2 CPU cores): "
                   f"{recipe.steps} supervised steps on reasoning traces{vision}, cached as "
                   f"{final}")
    start = time.monotonic()
    build_atomically(final, lambda tmp: build(
        name, tmp, data(recipe), cache_dir,
        vision_data=vision_data(recipe) if vision_data and recipe.vision_steps else None))
    rank_zero_info(f"built warm:{name} in {(time.monotonic() - start) / 60:.1f} min")
    return final
