"""Pre-training a tiny model's vision tower on dense per-token targets, before the warm-up.

A real Qwen2.5-VL's vision tower is pretrained; a locally built ``tiny:<size>``'s is random. Its
features do depend on the image (each merged token mostly on its own 28 x 28 block), but they
entangle what is there so that the language model, in a few thousand warm-up steps, learns to
read little of them, and training the tower along with the language model collapses it (see
``toyworld.warmup``). ``VisionPretrain`` gives the tower what pretraining gives a real one:
features from which a linear head reads what each image token shows. It trains the tower and its
merger, with a linear head on the merger's outputs, by binary cross-entropy against 0/1 (or
soft) targets per image token; the head is thrown away after. What the targets mean is the
data's business (``toyworld.perception`` for the shapes world): srmcr/ knows no world.

The recipe that uses it, and the search that chose it: ``toyworld.recipes`` and
docs/warm_starts.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from transformers import Qwen2_5_VLForConditionalGeneration

from srmcr.policy import PolicyArgs, load_processor, resolve_model


class VisionPretrain(L.LightningModule):
    """Trains ``model.model.visual`` (tower + merger) with a linear head over its image tokens.

    Batches have ``images`` (B PIL images, all of one size) and ``targets`` (B * tokens,
    channels): the images' merged tokens in the merger's (row-major) order.

    With ``words`` the tower is also aligned with the language model's word embeddings (as a
    VLM's projector is in its first training stage): channel c of the targets names
    ``words[c]``, and each token's merger output is pulled (mean squared error) toward the sum of
    its channels' word embeddings, each weighted by the target (and by ``word_weights[c]``). A
    token showing a red circle then enters the language model close to "red" + "circle".

    Args:
        model: A model folder (or spec) whose vision tower to train.
        channels: Targets per image token.
        max_pixels: The processor's pixel cap (the size the warm-up and training will use).
        lr: AdamW learning rate (constant).
        words: One word per channel: align the tower's outputs with their embeddings.
        word_weights: Weight of each channel's word in the alignment target (default 1).
    """

    def __init__(self, model: str, channels: int, max_pixels: int, lr: float = 1e-3,
                 words: Sequence[str] | None = None,
                 word_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        args = PolicyArgs(model=model, max_pixels=max_pixels)
        path = resolve_model(args.model)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
        self.processor = load_processor(args, path)
        self.model.requires_grad_(False)
        # from_pretrained returns eval mode; the tower trains (it has no dropout: same numbers)
        self.model.train()
        self.visual = self.model.model.visual.requires_grad_(True)
        self.head = torch.nn.Linear(self.model.config.vision_config.out_hidden_size, channels)
        self.lr = lr
        self.register_buffer("word_embeddings", None if words is None else
                             self.embed_words(words, word_weights or [1.0] * len(words)))

    @torch.no_grad()
    def embed_words(self, words: Sequence[str], weights: Sequence[float]) -> Tensor:  # (C, H)
        """Each word's mean input embedding over its tokens, times its weight."""
        if len(words) != self.head.out_features or len(weights) != len(words):
            raise ValueError(f"{len(words)} words and {len(weights)} weights for "
                             f"{self.head.out_features} channels")
        table = self.model.get_input_embeddings().weight
        ids = [self.processor.tokenizer(f" {w}", add_special_tokens=False)["input_ids"]
               for w in words]
        return torch.stack([table[i].mean(0) * w for i, w in zip(ids, weights)])

    def features(self, images: Sequence[Image.Image]) -> Tensor:  # (B * tokens, hidden)
        enc = self.processor.image_processor(images=list(images), return_tensors="pt")
        out = self.visual(enc["pixel_values"].to(self.device),
                          grid_thw=enc["image_grid_thw"].to(self.device)).pooler_output
        return torch.cat(list(out)) if isinstance(out, (list, tuple)) else out

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return batch  # PIL images stay on the CPU; features() moves the processor's tensors

    def training_step(self, batch, batch_idx: int) -> Tensor:
        features = self.features(batch.images)
        logits = self.head(features)
        targets = batch.targets.to(logits)
        if logits.shape != targets.shape:
            raise ValueError(f"{logits.shape[0]} image tokens but targets for {targets.shape[0]} "
                             f"({targets.shape[1]} channels, head has {logits.shape[1]})")
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        if self.word_embeddings is not None:
            aligned = torch.nn.functional.mse_loss(features, targets @ self.word_embeddings)
            self.log("vision/align", aligned.detach(), on_step=True, prog_bar=True,
                     batch_size=len(batch.images))
            loss = loss + aligned / self.word_embeddings.pow(2).mean()  # relative error
        hits = ((logits > 0) == (targets > 0.5)).float().mean()
        self.log_dict({"vision/loss": loss.detach(), "vision/accuracy": hits}, on_step=True,
                      prog_bar=True, batch_size=len(batch.images))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [*self.visual.parameters(), *self.head.parameters()]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)

    def save(self, out: Path) -> Path:
        """The whole model (language model unchanged) and its processor, as a model folder."""
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        return out
