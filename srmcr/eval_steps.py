"""The module's evaluation: validate, test and predict, one greedy completion per prompt.

``SRMCRModule`` (module.py) inherits these steps; module.py holds its training step. They read
the module's ``model``, ``processor``, ``sampling``, ``reward``, ``temperature``, its
``score_passes`` and ``records``, and the metrics its ``setup`` makes (``eval_metrics``,
``validity_metrics``). The maths: ``evaluation.py`` (accuracy, prediction rows) and
``validity.py`` (does the reward rank right above wrong?).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from srmcr import evaluation, validity
from srmcr.rollout import Rollout, sample


class EvaluationSteps:
    """validation_step, test_step and predict_step of ``SRMCRModule``, with their metrics'
    reset and logging."""

    def evaluate_batch(self, batch) -> tuple[Rollout, Tensor]:
        """Greedy completions, their log-prob passes (blank image included) and raw reward
        column scores (N, K); the columns' running means accumulate them."""
        rollout = evaluation.generate_greedy(self.model, self.processor, batch.images,
                                             batch.questions, self.sampling, ids=batch.ids)
        inputs, _ = self.score_passes(rollout)
        scores = self.reward.score(rollout, inputs, self.records(batch))
        self.reward.update_means(scores)
        return rollout, scores

    # Validation leaves the reward's reliability alone; the pre-flight (nothing trains) lets it
    # learn from the sampled groups, label-free, as the first training steps would.
    validation_learns_reliability = False

    @property
    def val_group_size(self) -> int:  # None: the training G
        return self.sampling.val_group_size if self.sampling.val_group_size is not None \
            else self.sampling.group_size

    def sample_validity(self, batch, batch_idx: int, greedy: Sequence[bool | None] | None = None
                        ) -> validity.ValidityBatch | None:
        """G completions per labelled question at the training temperature, scored by the
        reward and every diagnostic signal, paired with ``greedy`` (per record: its greedy
        answer is right); None without a labelled question, past ``val_sample_batches``, or
        with the sampled validation off."""
        rows = [i for i, a in enumerate(batch.answers) if a is not None]
        G, limit = self.val_group_size, self.sampling.val_sample_batches
        if not rows or G == 0 or (limit is not None and batch_idx >= limit):
            return None
        rollout = sample(self.model, self.processor, [batch.images[i] for i in rows],
                         [batch.questions[i] for i in rows], replace(self.sampling, group_size=G),
                         self.temperature, ids=[batch.ids[i] for i in rows])
        inputs, _ = self.score_passes(rollout)
        # (N, K); not added to the running means: val/reward/<cue> averages greedy completions.
        scores = self.reward.score(rollout, inputs, self.records(batch, rows))
        out = self.reward.combine(scores, rollout.well_formed, G,
                                  update=self.validation_learns_reliability)
        correct = evaluation.correctness([p.answer for p in rollout.parsed],
                                         [batch.answers[i] for i in rows for _ in range(G)])
        paired = None if greedy is None else torch.tensor([bool(greedy[i]) for i in rows])
        return validity.validity_batch(rollout, out.rewards, scores, self.reward.names,
                                       torch.tensor(correct), paired)

    def validation_step(self, batch, batch_idx: int) -> validity.ValidityBatch | None:
        rollout, _ = self.evaluate_batch(batch)
        self.eval_metrics.update(rollout, batch.answers)
        greedy = evaluation.correctness([p.answer for p in rollout.parsed], batch.answers)
        sampled = self.sample_validity(batch, batch_idx, greedy)
        if sampled is not None:
            self.validity_metrics.update(sampled)
        return sampled  # for callbacks (the pre-flight report)

    test_step = validation_step

    def on_validation_epoch_start(self) -> None:
        self.reset_eval_metrics()

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self.log_eval("val")

    def on_test_epoch_end(self) -> None:
        self.log_eval("test")

    def reset_eval_metrics(self) -> None:
        # Outside inference mode: reset makes new state tensors, and an update outside
        # inference mode could not change inference tensors in place.
        with torch.inference_mode(False):
            self.eval_metrics.reset()
            self.validity_metrics.reset()
            self.reward.reset_means()

    def log_eval(self, prefix: str) -> None:
        """``<prefix>/accuracy``, ``format_rate``, ``completion_len``, ``truncated``, counts, and
        ``reward/<cue>``: epoch means, already summed across ranks by torchmetrics."""
        cue_means = self.reward.means()
        stats = self.eval_metrics.compute()
        with warnings.catch_warnings():  # every rank syncs, also one that sampled nothing
            warnings.filterwarnings("ignore", message=".*before the ``update`` method")
            stats |= self.validity_metrics.compute()
        metrics = evaluation.eval_log_dict(prefix, stats, cue_means)
        self.reset_eval_metrics()
        self.log_dict(metrics, batch_size=1, sync_dist=True)  # equal on every rank: no-op mean

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        """Rows of ``predictions.jsonl`` (see ``evaluation.prediction_records``)."""
        rollout, scores = self.evaluate_batch(batch)
        return evaluation.prediction_records(rollout, scores, self.reward.names, batch.answers,
                                             batch.sources)
