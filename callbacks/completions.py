"""TensorBoard views of what the policy writes: completion tables, image thumbnails, histograms.

Every ``every_n_steps`` training batches, from the ``step`` (a ``StepRecord``: rollout, reward,
advantages of the step that just ran) in the outputs of the module's ``training_step``, the
callback writes

- ``train/completions`` (TEXT tab): for the first ``groups`` groups, the question and a table of
  the G completions with each cue's raw score, well-formedness, reward and advantage, under a
  header with the step, the sampling temperature, the mean raw reward and the cue weights;
- ``train/completions/image_<g>`` (IMAGES tab): the group's image as a thumbnail;
- ``train/hist/reward``, ``train/hist/reward_raw``, ``train/hist/advantage`` (HISTOGRAMS tab)
  over all N completions of the step.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from srmcr.errors import require

if TYPE_CHECKING:
    from srmcr.module import StepRecord


def _cell(text: str, max_chars: int) -> str:
    """Text safe inside a markdown table cell: tags shown, not eaten as HTML; one line."""
    text = text if len(text) <= max_chars else text[:max_chars] + " …"
    return html.escape(text).replace("|", "&#124;").replace("\n", "<br>") or "<i>(empty)</i>"


def _num(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.3f}"


def completion_markdown(step: StepRecord, cue_names: list[str], global_step: int,
                        groups: int = 2, max_chars: int = 500) -> str:
    """The markdown summary of the first ``groups`` groups of one training step."""
    rollout, reward = step.rollout, step.reward
    G = rollout.group_size
    weights = ", ".join(f"{n} {reward.stats.get(f'weight/{n}', float('nan')):.2f}"
                        for n in cue_names)
    lines = [f"**step {global_step}** · temperature {rollout.temperature:.3f} · "
             f"mean raw reward {reward.raw.float().nanmean():.3f} · weights: {weights}", ""]
    scores = reward.scores.float().cpu().tolist()
    rewards, advantages = reward.rewards.float().cpu().tolist(), step.advantages.float().cpu()
    for g in range(min(groups, rollout.num_groups)):
        first = g * G
        lines += [f"### group {g} · {html.escape(rollout.ids[first])}", "",
                  f"**question:** {_cell(rollout.questions[first], max_chars)}", "",
                  "| # | completion | " + " | ".join(cue_names)
                  + " | well formed | reward | advantage |",
                  "|---|---|" + "---|" * (len(cue_names) + 3)]
        for i in range(first, first + G):
            cells = [str(i - first), _cell(rollout.texts[i], max_chars),
                     *(_num(s) for s in scores[i]), "yes" if rollout.parsed[i].well_formed
                     else "no", _num(rewards[i]), _num(float(advantages[i]))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def thumbnail(image, size: int = 128) -> np.ndarray:  # (H, W, 3) uint8
    small = image.convert("RGB").copy()
    small.thumbnail((size, size))
    return np.asarray(small)


class CompletionTables(L.Callback):
    """Log completion tables, image thumbnails and reward/advantage histograms to TensorBoard.

    Needs a ``TensorBoardLogger`` (other loggers: a warning, nothing written) and a module whose
    ``training_step`` returns its ``step`` (``SRMCRModule``). Runs on rank 0, on its own groups.

    Args:
        every_n_steps: Log on training batches 0, n, 2n, ... (``log_completions_every_n_steps``).
        groups: Groups (prompts with their G completions) shown per table.
        max_chars: Longer completions are cut in the table.
        thumbnail_size: Longest side of the image thumbnails, in pixels.
    """

    def __init__(self, every_n_steps: int = 50, groups: int = 2, max_chars: int = 500,
                 thumbnail_size: int = 128) -> None:
        require({
            f"CompletionTables every_n_steps={every_n_steps}: set it to 1 or more":
                every_n_steps >= 1,
            f"CompletionTables groups={groups}: set it to 1 or more": groups >= 1,
            f"CompletionTables max_chars={max_chars}: set it to 1 or more": max_chars >= 1,
            f"CompletionTables thumbnail_size={thumbnail_size}: set it to 8 (pixels) or more":
                thumbnail_size >= 8,
        })
        self.every_n_steps, self.groups = every_n_steps, groups
        self.max_chars, self.thumbnail_size = max_chars, thumbnail_size
        self._warned = False

    def _writer(self, trainer: L.Trainer):
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        if not (self._warned or trainer.fast_dev_run):  # fast_dev_run turns loggers off
            rank_zero_warn("CompletionTables writes only to a TensorBoardLogger: none is set")
            self._warned = True
        return None

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step: StepRecord | None = outputs.get("step") if isinstance(outputs, Mapping) else None
        if batch_idx % self.every_n_steps or step is None:
            return
        writer = self._writer(trainer)
        if writer is None:
            return
        at = trainer.global_step
        names = list(pl_module.reward.names)
        writer.add_text("train/completions",
                        completion_markdown(step, names, at, self.groups, self.max_chars), at)
        for g, image in enumerate(step.rollout.images[:self.groups]):
            writer.add_image(f"train/completions/image_{g}",
                             thumbnail(image, self.thumbnail_size), at, dataformats="HWC")
        for tag, values in (("reward", step.reward.rewards), ("reward_raw", step.reward.raw),
                            ("advantage", step.advantages)):
            values = values.detach().float().cpu()
            values = values[values.isfinite()]
            if len(values):
                writer.add_histogram(f"train/hist/{tag}", values, at)
