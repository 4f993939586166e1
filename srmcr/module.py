"""SRMCRModule: orchestration of one SR-MCR step. The maths lives in grpo.py, reward.py, cues/;
its validate / test / predict steps in eval_steps.py.

rollout -> log-prob passes -> reward -> advantages -> clipped GRPO loss (micro-batched) -> log
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from srmcr import evaluation, grpo, record_faults, rng, validity
from srmcr.cues import CueInputs
from srmcr.errors import ConfigError, require
from srmcr.eval_steps import EvaluationSteps
from srmcr.guards import NON_FINITE_ADVICE, CollapseMonitor, UpdateGuard
from srmcr.logprobs import (
    TokenLogProbs,
    blank_pixel_values,
    completion_logits,
    rollout_logprobs,
    token_logprobs,
)
from srmcr.policy import PolicyArgs, load_policy
from srmcr.policy_view import PolicyView
from srmcr.reward import RewardOutput, SelfReward
from srmcr.reward_functions import Records
from srmcr.rollout import Rollout, SamplingArgs, sample


@dataclass
class GRPOArgs:
    """The critic-free GRPO update."""

    beta: float = 0.01
    """KL weight towards the adapter-disabled base model (0 skips the reference pass)."""
    clip_low: float = 0.2
    """Lower clip range: ratio >= 1 - clip_low."""
    clip_high: float = 0.2
    """Upper clip range: ratio <= 1 + clip_high (DAPO's clip-higher uses 0.28)."""
    aggregation: Literal["grpo", "token", "dr_grpo"] = "grpo"
    """How token losses are averaged: per sequence (grpo), per token (token), or Dr. GRPO."""
    num_iterations: int = 1
    """mu: optimizer steps per rollout (>1 reuses the rollout with importance ratios)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward in the loss and log-prob passes."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping by global norm (None: off)."""
    max_consecutive_skips: int = 3
    """Updates with a non-finite reward, advantage, loss or gradient are skipped; this many in a
    row stop the run with an error."""
    collapse_patience: int = 20
    """Warn when every group has had identical rewards for this many steps in a row."""

    def __post_init__(self) -> None:
        grad_norm = self.max_grad_norm
        require({
            f"grpo.beta={self.beta}: set it to 0 (no KL term, no reference pass) or more":
                0 <= self.beta < math.inf,
            f"grpo.clip_low={self.clip_low}: set it above 0 and below 1 (the ratio's floor is "
            "1 - clip_low)": 0 < self.clip_low < 1,
            f"grpo.clip_high={self.clip_high}: set it above 0 (the ratio's ceiling is "
            "1 + clip_high)": 0 < self.clip_high < math.inf,
            f"grpo.aggregation={self.aggregation!r}: set it to one of "
            f"{', '.join(grpo.AGGREGATIONS)}": self.aggregation in grpo.AGGREGATIONS,
            f"grpo.num_iterations={self.num_iterations}: set it to 1 or more (optimizer steps "
            "per rollout)": self.num_iterations >= 1,
            f"grpo.micro_batch_size={self.micro_batch_size}: set it to 1 or more":
                self.micro_batch_size >= 1,
            f"grpo.max_grad_norm={grad_norm}: set it above 0, or null (no clipping)":
                grad_norm is None or 0 < grad_norm < math.inf,
            f"grpo.max_consecutive_skips={self.max_consecutive_skips}: set it to 1 or more":
                self.max_consecutive_skips >= 1,
            f"grpo.collapse_patience={self.collapse_patience}: set it to 1 or more":
                self.collapse_patience >= 1,
        })


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


def check_optimizer(factory: OptimizerCallable) -> None:
    """Build the optimizer once over a stand-in parameter: torch checks its arguments (a negative
    learning rate, betas outside [0, 1)) when it is built, which is after the model has loaded."""
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        # A jsonargparse factory is a partial whose arguments include the optimizer's class.
        kinds = [a for a in (*getattr(factory, "args", ()), getattr(factory, "func", None), factory)
                 if isinstance(a, type)]
        name = kinds[0].__name__ if kinds else getattr(factory, "__name__", "optimizer")
        raise ConfigError(f"model.optimizer ({name}) refuses its arguments: {error}; fix them "
                          "in model.optimizer.init_args") from error


@dataclass
class StepRecord:
    """One training step, in ``training_step``'s outputs for callbacks that show it
    (``CompletionTables``)."""

    rollout: Rollout
    reward: RewardOutput
    advantages: Tensor  # (N,)


class SRMCRModule(EvaluationSteps, L.LightningModule):
    """Self-rewarding GRPO on a LoRA-adapted Qwen2.5-VL.

    Args:
        policy: Model, precision and LoRA settings.
        sampling: Group size, lengths and sampling settings.
        grpo: Loss and update settings.
        reward: The self-referential reward (cues, priors, reliability weighting).
        optimizer: Optimizer over the LoRA parameters.
    """

    def __init__(self, policy: PolicyArgs = PolicyArgs(), sampling: SamplingArgs = SamplingArgs(),
                 grpo: GRPOArgs = GRPOArgs(), reward: SelfReward | None = None,
                 optimizer: OptimizerCallable = _adamw) -> None:
        super().__init__()
        # Plain dicts: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters({"policy": asdict(policy), "sampling": asdict(sampling),
                                   "grpo": asdict(grpo)})
        self.policy_args, self.sampling, self.grpo_args = policy, sampling, grpo
        self.reward = reward if reward is not None else SelfReward()
        self.optimizer_factory = optimizer
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the adapter and reward state
        self.temperature = sampling.temperature  # owned by the ConfidenceCooling callback
        self.model: torch.nn.Module | None = None
        self.processor = None
        self._resumed_rng: dict | None = None
        self.guard = UpdateGuard(grpo.max_consecutive_skips)
        self.collapse = CollapseMonitor(grpo.collapse_patience)
        # Records dropped inside a step, per reason (data/skipped/<reason>); checkpointed.
        self.skipped_records = {record_faults.REASON: 0}

    def setup(self, stage: str) -> None:
        self.eval_metrics = evaluation.EvalMetrics()
        self.validity_metrics = validity.RewardValidity(validity.signal_names(self.reward.names))
        # Cross-object checks, before configure_model loads any weights.
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        if stage == "fit" and batch_size is not None:
            rows, micro = batch_size * self.sampling.group_size, self.grpo_args.micro_batch_size
            fits = [d for d in range(1, rows + 1) if rows % d == 0]
            require({f"grpo.micro_batch_size={micro} does not divide the {rows} completions of a "
                     f"step (data.batch_size={batch_size} x sampling.group_size="
                     f"{self.sampling.group_size}); use one of {fits}":
                     micro >= rows or rows % micro == 0})
        if stage == "fit":
            check_optimizer(self.optimizer_factory)

    def configure_model(self) -> None:
        if self.model is None:
            self.model, self.processor = load_policy(self.policy_args)
            self.model.train()  # from_pretrained returns eval mode; sampling switches per call

    def configure_optimizers(self):
        return self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Never write the frozen base model: keep the adapter and the reward's state.
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in trainable or k.startswith("reward.")}
        # RNG states too: sampling draws from them, and exact resume needs the same draws.
        checkpoint["srmcr"] = {"guard": self.guard.state_dict(), "temperature": self.temperature,
                               "rng": rng.get_state(),
                               "skipped_records": dict(self.skipped_records)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # strict_loading is off (the frozen base is not in checkpoints), so check by hand that
        # the checkpoint has every adapter weight: else a mismatched one would load nothing.
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(checkpoint["state_dict"]))
        if missing:
            raise ConfigError(f"the checkpoint lacks {len(missing)} of the {len(trainable)} LoRA "
                              f"weights of this model (e.g. {missing[0]}): it was written for "
                              "another model or LoRA configuration (policy.model, policy.lora)")
        state = checkpoint.get("srmcr")
        if state is not None:
            self.guard.load_state_dict(state["guard"])
            self.temperature = state["temperature"]
            self._resumed_rng = state["rng"]
            self.skipped_records.update(state.get("skipped_records", {}))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Restored here, not at load: creating the resumed dataloader iterator draws from the
        # torch RNG, which the uninterrupted run did only once, before its first step.
        if self._resumed_rng is not None:
            rng.set_state(self._resumed_rng)
            self._resumed_rng = None

    # ---- one step --------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> dict:
        rows, rollout = self.sample_records(batch)
        self.log_dict({f"data/skipped/{reason}": float(n) for reason, n in
                       self.skipped_records.items()}, on_step=True, batch_size=len(batch))
        if self.on_any_rank(rollout is None):  # no record left (on some rank): every rank skips
            skipped = self.skip_update("batch", batch.ids, "no record of the batch that sampling "
                                       "can take", "Check the records named in the warnings above.")
            nan = torch.tensor(float("nan"))  # no completion: callbacks keep their state
            return {**skipped, "confidence": nan, "collapse": nan}
        inputs, old_logp = self.score_passes(rollout)
        ref = self.reference_logp(rollout) if self.grpo_args.beta > 0 else None
        out = self.reward(rollout, inputs, self.records(batch, rows))
        advantages = grpo.group_advantages(out.rewards.to(self.device), rollout.group_size)
        stats = self.optimize(rollout, advantages, old_logp, None if ref is None else ref.logp)
        if ref is not None:  # the loss's KL is at the sampling temperature: "kl_t"; "kl" at T = 1
            stats["kl_t"] = stats.pop("kl")
            stats["kl"] = grpo.k3_divergence(rollout.logp, ref.logp_t1, rollout.completion_mask)
        signals = self.log_step(rollout, out, advantages, stats)
        # For callbacks, as on_train_batch_end's outputs (ConfidenceCooling, CompletionTables).
        return {"loss": stats["loss"], **signals, "step": StepRecord(rollout, out, advantages)}

    def sample_records(self, batch) -> tuple[list[int], Rollout | None]:
        """The step's rollout, and the batch row of each of its prompts; records that make
        sampling raise are replaced by the batch's others and counted, and no rollout comes when
        none is left (``srmcr.record_faults``)."""
        def sample_rows(rows: Sequence[int], probe: bool) -> Rollout:
            args = replace(self.sampling, group_size=2, max_new_tokens=1) if probe \
                else self.sampling
            return sample(self.model, self.processor, [batch.images[r] for r in rows],
                          [batch.questions[r] for r in rows], args, self.temperature,
                          ids=[batch.ids[r] for r in rows])
        rows, rollout, skipped = record_faults.sample_skipping(sample_rows, batch.ids,
                                                               self.global_step + 1)
        self.skipped_records[record_faults.REASON] += skipped
        return rows, rollout

    def score_passes(self, rollout: Rollout) -> tuple[CueInputs, Tensor | None]:
        """No-grad passes the reward or the update need before the loss pass: the inputs the
        enabled cues take (``reward.needs``, only those), and the old policy's log-probs.

        The sampler already gave the T=1 log-probs and confidence (``rollout.logp``,
        ``max_prob``). Visual grounding adds one forward, with blank images; num_iterations > 1
        adds the old policy's log-probs at the sampling temperature (else None).
        """
        mb, needs = self.grpo_args.micro_batch_size, self.reward.needs
        policy = blank_logp = None
        if "policy" in needs:  # cues that ask the policy itself call it through this
            policy = PolicyView(self.model, self.processor, self.sampling, mb)
        if "blank_logp" in needs:
            blank = blank_pixel_values(self.processor, rollout)
            blank_logp = rollout_logprobs(self.model, rollout, mb, blank,
                                          at_temperature=False).logp_t1
        inputs = CueInputs(blank_logp=blank_logp, policy=policy)
        if self.grpo_args.num_iterations == 1:
            return inputs, None
        return inputs, rollout_logprobs(self.model, rollout, mb, at_t1=False).logp

    def records(self, batch, rows: Sequence[int] | None = None) -> Records:
        """The batch's records (``rows`` of them) as reward functions see them. The labels come
        along only when a function declares it uses them: otherwise they never reach the reward.
        """
        rows = range(len(batch.questions)) if rows is None else rows
        answers = [batch.answers[i] for i in rows] if self.reward.uses_labels else None
        return Records([batch.sources[i] for i in rows], answers)

    def reference_logp(self, rollout: Rollout) -> TokenLogProbs:
        """The adapter-disabled model's log-probs at the sampling temperature (the loss's KL)
        and at T = 1 (``train/kl``, comparable across temperatures, against ``rollout.logp``)."""
        with self.model.disable_adapter():
            return rollout_logprobs(self.model, rollout, self.grpo_args.micro_batch_size)

    def optimize(self, rollout: Rollout, advantages: Tensor, old_logp: Tensor | None,
                 ref_logp: Tensor | None) -> dict[str, Tensor]:
        """num_iterations optimizer steps, each accumulating micro-batch gradients.

        A non-finite advantage, loss or gradient skips the update (weights untouched).
        """
        if self.on_any_rank(not self.guard.finite(advantages)):
            return self.skip_update("reward or advantage", rollout.ids)
        args, opt = self.grpo_args, self.optimizers()
        mask = rollout.completion_mask
        norm = grpo.loss_normalizer(mask, args.aggregation)
        totals: dict[str, Tensor] = {}
        for _ in range(args.num_iterations):
            totals, bad_loss = {}, False
            for start in range(0, len(rollout), args.micro_batch_size):
                rows = slice(start, start + args.micro_batch_size)
                logits = completion_logits(self.model, rollout, rows)
                logp = token_logprobs(logits, rollout.completion_ids[rows], rollout.temperature)
                old = logp.detach() if args.num_iterations == 1 else old_logp[rows]
                loss, stats = grpo.policy_loss(
                    logp, old, None if ref_logp is None else ref_logp[rows], advantages[rows],
                    mask[rows], clip_low=args.clip_low, clip_high=args.clip_high, beta=args.beta,
                    aggregation=args.aggregation, normalizer=norm)
                bad_loss |= not self.guard.finite(loss)
                self.manual_backward(loss)
                share = mask[rows].sum() / mask.sum().clamp(min=1)  # token share of this part
                for key, value in {"loss": loss.detach(), **{k: v * share for k, v in
                                                             stats.items()}}.items():
                    totals[key] = totals.get(key, 0) + value
            # Decided on every rank together: a rank that skipped alone would hang the others.
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            bad_grad = not all(self.guard.finite(g) for g in grads)
            if self.on_any_rank(bad_loss or bad_grad):
                return self.skip_update("loss" if bad_loss else "gradient", rollout.ids)
            if args.max_grad_norm is not None:
                self.clip_gradients(opt, gradient_clip_val=args.max_grad_norm,
                                    gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.guard.ok()
        return totals

    def on_any_rank(self, flag: bool) -> bool:
        flags = self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device),
                                             reduce_op="sum")
        return bool(flags > 0)

    def skip_update(self, what: str, ids: Sequence[str], cause: str | None = None,
                    advice: str = NON_FINITE_ADVICE) -> dict[str, Tensor]:
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        # A step with no gradients leaves every weight and its Adam state alone but still counts
        # as a step, so max_steps, logging and checkpoints stay aligned with the batches.
        opt.step()
        self.guard.skip(what, ids, self.global_step, cause, advice)
        nan = torch.tensor(float("nan"))
        return {"loss": nan, "kl": nan, "clip_frac": nan}

    # ---- logging ---------------------------------------------------------------------------
    def log_step(self, rollout: Rollout, out: RewardOutput, advantages: Tensor,
                 stats: dict[str, Tensor]) -> dict[str, float]:
        """Log the step's ``train/*`` metrics; return its ``confidence`` (mean max-prob at T = 1)
        and ``collapse`` (share of groups of identical completions), averaged over the ranks."""
        G, mask = rollout.group_size, rollout.completion_mask
        confidence = (rollout.max_prob * mask).sum() / mask.sum().clamp(min=1)
        ids = rollout.completion_ids.view(-1, G, mask.shape[1])
        collapse = (ids == ids[:, :1]).all(-1).all(-1).float().mean()
        rewards = out.rewards.view(-1, G)
        # Both signals in one reduce across ranks; every tensor value in one copy to the host
        # (float64 holds each exactly: the same floats as one float() per value).
        shared = self.trainer.strategy.reduce(torch.stack([confidence, collapse]),
                                              reduce_op="mean")
        tensors = {**stats, "confidence": shared[0], "collapse": shared[1],
                   "frac_zero_std_groups": (rewards.std(dim=1) < 1e-6).float().mean(),
                   "completion_len": mask.sum(1).float().mean(),
                   "truncated": rollout.truncated.float().mean()}
        values = dict(zip(tensors, torch.stack([v.detach().to(self.device, torch.float64)
                                                for v in tensors.values()]).tolist()))
        signals = {k: values.pop(k) for k in ("confidence", "collapse")}
        metrics = {
            **{k: values[k] for k in stats},
            **out.stats,
            **{k: values[k] for k in ("frac_zero_std_groups", "completion_len", "truncated")},
            "temperature": rollout.temperature,
            **signals,
            "skipped_updates": float(self.guard.skipped),
        }
        self.collapse.update(metrics["frac_zero_std_groups"], rollout.temperature,
                             self.global_step)
        datamodule = getattr(self.trainer, "datamodule", None)
        for reason, count in getattr(datamodule, "skipped", {}).items():
            metrics[f"data/skipped/{reason}"] = float(count)
        B = rollout.num_groups
        self.log_changed({k if k.startswith("data/") else f"train/{k}": v
                          for k, v in metrics.items()}, on_step=True, batch_size=B)
        self.log_changed({"reward": metrics["reward_raw"], "T": rollout.temperature},
                         prog_bar=True, logger=False, on_step=True, batch_size=B)
        return signals

    def on_train_epoch_start(self) -> None:
        self._logged: dict[str, float] = {}  # Lightning starts an epoch without step values

    def log_changed(self, metrics: dict[str, float], **flags) -> None:
        """``log_dict`` of the values not already logged in this epoch: Lightning hands every
        training key's last value to the logger, the progress bar and ``callback_metrics``
        again at each step of the epoch, and each ``self.log`` costs about 0.25 ms."""
        logged = vars(self).setdefault("_logged", {})
        changed = {k: v for k, v in metrics.items() if logged.get(k, math.nan) != v}
        logged.update(changed)
        self.log_dict(changed, **flags)
