"""The self-reward: cue scores -> a reliability-weighted, group-normalized reward (DESIGN.md).

The maths lives in pure tensor functions at the top; ``SelfReward`` only wires cues, encoder and
the reliability state together. Shape letters: B groups, G completions per group, N = B*G, K cues.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from srmcr.cues import CUE_NAMES, CUES, Cue, CueName
from srmcr.encoder import TextEncoder
from srmcr.errors import ConfigError

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout

EPS = 1e-6  # DESIGN's z = (s − mean_g) / (std_g + 1e-6)
# The default recipe (docs/reward.md): the five SR-MCR cues plus the group's vote share of each
# answer, which also anchors the reliability weights; chosen by within-group AUC on shapes:val.
DEFAULT_CUES: tuple[CueName, ...] = (*CUE_NAMES, "answer_support")
AUTO_ANCHOR: CueName = "answer_support"


def _grouped(x: Tensor, group_size: int) -> Tensor:  # (N, K) -> (B, G, K); explicit B for K = 0
    return x.view(x.shape[0] // group_size, group_size, x.shape[-1])


def fill_abstentions(scores: Tensor, group_size: int) -> Tensor:  # (N, K) -> (N, K)
    """NaN (abstain) -> the group mean of that cue; stays NaN only if the whole group abstains."""
    s = _grouped(scores, group_size)  # (B, G, K)
    return torch.where(s.isnan(), s.nanmean(1, keepdim=True), s).view_as(scores)


def group_zscores(filled: Tensor, group_size: int) -> Tensor:  # (N, K) -> (N, K)
    """Per-group z-scores with the POPULATION std (so z has unit variance in its group).

    Zero spread and whole-group abstentions give z = 0 exactly, never NaN.
    """
    s = _grouped(filled, group_size)  # (B, G, K)
    centred = s - s.mean(1, keepdim=True)
    z = centred / (centred.square().mean(1, keepdim=True).sqrt() + EPS)
    flat = (s.amax(1, keepdim=True) - s.amin(1, keepdim=True)) == 0  # exact: no float noise
    return torch.where(flat | s.isnan(), 0.0, z).view_as(filled)


def batch_scaled(filled: Tensor, group_size: int) -> Tensor:  # (N, K) -> (N, K)
    """Scores centred in their group and divided by the cue's spread over the whole batch
    (RMS of the centred values), not by each group's own: a cue whose scores barely move inside
    a group keeps a small say instead of being blown up to unit scale. Whole-group abstentions
    give 0."""
    s = _grouped(filled, group_size)  # (B, G, K)
    centred = torch.nan_to_num(s - s.mean(1, keepdim=True))
    scale = centred.square().mean((0, 1), keepdim=True).sqrt()  # (1, 1, K)
    return torch.where(scale > 1e-6, centred / (scale + EPS), 0.0).view_as(filled)


NORMALIZERS = {"group": group_zscores, "batch": batch_scaled}


def gate_unanswered(rewards: Tensor, well_formed: Tensor, group_size: int,
                    margin: float = 1.0) -> Tensor:  # (N,), (N,) -> (N,)
    """The format gate: an ill-formed completion (no usable answer) ends at least ``margin``
    below every well-formed completion of its group, whatever its cue scores (ill-formed ones
    keep their order below that line). Groups without a well-formed completion are unchanged."""
    r, ok = rewards.view(-1, group_size), well_formed.bool().view(-1, group_size)
    line = torch.where(ok, r, torch.inf).amin(1, keepdim=True) - margin  # (B, 1); inf: none
    return torch.where(ok, r, torch.minimum(r, line)).view_as(rewards)


def consensus_correlation(z: Tensor, group_size: int,
                          anchor: int | None = None) -> tuple[Tensor, Tensor]:  # (K,), (K,)
    """Sum over groups of Pearson corr(z_k, reference), and the number of groups where it is
    defined (both sides vary); the reference is the mean of the other cues' z (consensus), or
    with ``anchor`` the z of that cue (its own correlation is 1 by definition). Sums, not
    means, so ranks can all-reduce them."""
    k = z.shape[-1]
    zg = _grouped(z, group_size)  # (B, G, K)
    if anchor is None:
        others = (zg.sum(-1, keepdim=True) - zg) / (k - 1)  # (B, G, K)
    else:
        others = zg[..., anchor:anchor + 1].expand_as(zg)
    x, y = zg - zg.mean(1, keepdim=True), others - others.mean(1, keepdim=True)
    norm = ((x * x).sum(1) * (y * y).sum(1)).sqrt()  # (B, K)
    defined = norm > 1e-12
    corr = torch.where(defined, (x * y).sum(1) / norm.clamp(min=1e-12), 0.0)
    return corr.sum(0), defined.sum(0).to(z.dtype)


def floored_weights(logits: Tensor, floor: float) -> Tensor:  # (K,) -> (K,)
    """softmax(logits), then every weight >= floor with the sum kept at 1.

    A plain floor-then-renormalize can push a floored weight back under the floor; instead the
    floored cues are fixed at ``floor`` and the rest share 1 − n·floor in their original ratios,
    repeated until no free weight is under the floor (at most K rounds; needs K·floor <= 1).
    """
    p = torch.softmax(logits, -1)
    fixed = torch.zeros_like(p, dtype=torch.bool)
    w = p
    for _ in range(len(p)):
        low = (w < floor) & ~fixed
        if not low.any():
            break
        fixed |= low
        free = torch.where(fixed, 0.0, p)
        w = torch.where(fixed, floor, free / free.sum() * (1 - floor * fixed.sum()))
    return w


def weighted_raw(filled: Tensor, weights: Tensor) -> Tensor:  # (N, K), (K,) -> (N,)
    """Σ_k w_k s_k over the cues that apply (weights renormalized over them); NaN if none does."""
    defined = ~filled.isnan()
    num = (torch.nan_to_num(filled) * weights).sum(-1)
    return num / (defined * weights).sum(-1)


@dataclass
class RewardOutput:
    rewards: Tensor  # (N,) Σ w_k z_k, gated (or + λ_fmt·well_formed): what advantages come from
    scores: Tensor  # (N, K) raw cue scores, NaN = abstain
    raw: Tensor  # (N,) Σ w_k s_k: the interpretable raw reward, for logging
    stats: dict[str, float]  # log keys without the "train/" prefix


class SelfReward(nn.Module):
    """Reliability-weighted, group-normalized self-reward from the cues (DESIGN.md, "Reward").

    Checkpoints hold only the reliability state (``reliability_ema``, ``reliability_initialised``
    buffers); the encoder is not a submodule and the cues' running means are not persistent.

    Args:
        cues: the enabled cues, by name: any of ``CUE_NAMES`` (the five SR-MCR cues) or of
            ``RecipeCueName`` (answer_support, answer_agreement, self_certainty,
            answer_certainty, perception_sufficiency, self_verification; see
            configs/recipes/ and docs/reward.md). Default: the five + answer_support. Ablate
            one by leaving it out,
            e.g. ``--model.reward.cues='[semantic_alignment,lexical_fidelity,non_redundancy,
            step_consistency]'`` (one flag, no spaces).
        priors: prior weight per cue name (> 0; default 1.0 each). Priors of cues not enabled
            are ignored, so one YAML of priors serves every ablation.
        reliability: weight cues by their agreement with a reference (``anchor``); false =
            normalized priors.
        anchor: the cue whose within-group ranking the others' reliability is measured
            against: each cue's weight grows with its correlation with the anchor inside the
            groups; a named anchor must be enabled. ``auto`` (default): answer_support, the
            group's vote for each answer, when it is enabled, else the consensus;
            ``consensus``: the mean of the other cues (version 1).
        normalize: ``group``: z-scores within each group; ``batch``: centred within the group
            and divided by the cue's spread over the whole batch, so a cue that barely moves
            inside a group keeps a small say.
        format: ``gate``: a completion without a usable answer (not well-formed) ranks at least
            1 below every well-formed completion of its group; ``bonus``: version 1's additive
            ``format_weight``·well_formed, which a high cue score can outweigh.
        momentum: EMA momentum of the reliability.
        tau: temperature of the weights, w_k ∝ prior_k · exp(ρ_k / tau).
        floor: minimum weight of an enabled cue (needs floor · K <= 1).
        format_weight: λ_fmt, added to the reward of a well-formed completion (``bonus`` only).
        encoder_model: sentence-transformers folder or hub id for E(x); null = packaged MiniLM.
        encoder_batch_size: texts per encoder forward pass.
    """

    def __init__(self, cues: Sequence[CueName] = DEFAULT_CUES,
                 priors: dict[str, float] | None = None,
                 reliability: bool = True,
                 anchor: CueName | Literal["auto", "consensus"] = "auto",
                 normalize: Literal["group", "batch"] = "group",
                 format: Literal["gate", "bonus"] = "gate", momentum: float = 0.9,
                 tau: float = 0.5, floor: float = 0.05, format_weight: float = 0.5,
                 encoder_model: str | None = None, encoder_batch_size: int = 64) -> None:
        super().__init__()
        names, prior_values = _check(list(cues), priors or {}, momentum, tau, floor, format_weight)
        if anchor == "auto":
            anchor = AUTO_ANCHOR if AUTO_ANCHOR in names else "consensus"
        if anchor != "consensus" and anchor not in names:
            raise ConfigError(f"reward.anchor={anchor!r} is not an enabled cue; add it to "
                              f"reward.cues or set anchor: consensus (the mean of the cues)")
        if normalize not in NORMALIZERS or format not in ("gate", "bonus"):
            raise ConfigError(f"reward.normalize must be one of {sorted(NORMALIZERS)} and "
                              f"reward.format 'gate' or 'bonus'; got {normalize!r}, {format!r}")
        self.names = names
        self.anchor = None if anchor == "consensus" else names.index(anchor)
        self.normalize, self.format = normalize, format
        self.use_reliability = reliability and len(names) > 1  # one cue: nothing to agree with
        self.momentum, self.tau, self.floor = momentum, tau, floor
        self.format_weight = format_weight
        self._encoder = TextEncoder(encoder_model, encoder_batch_size)
        self.cues = nn.ModuleDict({n: _build(n, self._encoder) for n in names})
        # Priors come from the config, not the checkpoint: not persistent.
        self.register_buffer("log_prior", torch.tensor(prior_values).log(), persistent=False)
        self.register_buffer("reliability_ema", torch.zeros(len(names)))  # ρ_k
        self.register_buffer("reliability_initialised", torch.zeros(len(names), dtype=torch.bool))

    @property
    def encoder(self) -> TextEncoder:
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: TextEncoder) -> None:
        """Swap the shared encoder of every text cue (e.g. a fake one in tests)."""
        self._encoder = encoder
        for cue in self.cues.values():
            if cue.uses_encoder:
                cue.encoder = encoder

    @property
    def needs_blank_logprobs(self) -> bool:
        """Whether the caller must fill ``rollout.blank_logp`` (and ``logp``) before ``forward``."""
        return any(cue.needs_blank_logprobs for cue in self.cues.values())

    @property
    def needs_policy(self) -> bool:
        """Whether the caller must set ``rollout.policy`` (a ``PolicyView``) before ``forward``."""
        return any(cue.needs_policy for cue in self.cues.values())

    def weights(self) -> Tensor:  # (K,)
        if not self.use_reliability:
            return torch.softmax(self.log_prior, -1)
        return floored_weights(self.log_prior + self.reliability_ema / self.tau, self.floor)

    @torch.no_grad()
    def forward(self, rollout: Rollout) -> RewardOutput:
        """Score the rollout with every enabled cue, then ``combine``. Fill ``rollout.logp`` and
        ``rollout.blank_logp`` first when ``needs_blank_logprobs``."""
        return self.combine(self.score(rollout), rollout.well_formed, rollout.group_size)

    @torch.no_grad()
    def score(self, rollout: Rollout, update_means: bool = True) -> Tensor:  # (N, K), NaN = abstain
        """Raw cue scores; ``update_means=False`` leaves the cues' running means alone (the
        sampled validation must not mix into ``val/reward/<cue>``, a mean over greedy ones)."""
        device = self.reliability_ema.device
        self._encoder.device = device  # follow the module, wherever Lightning moved it
        texts = [t for cue in self.cues.values() for t in cue.texts(rollout)]
        with self._encoder.step(texts):  # one batched encoder call for every text cue
            columns = [(cue(rollout) if update_means else cue.score(rollout)).to(device)
                       for cue in self.cues.values()]
        if not columns:
            return torch.zeros(len(rollout.texts), 0, device=device)
        return torch.stack(columns, -1)

    @torch.no_grad()
    def combine(self, scores: Tensor, well_formed: Tensor, group_size: int,
                update: bool = True) -> RewardOutput:
        """DESIGN's steps 1-5 on raw scores (N, K) and well_formed (N,); updates the EMA
        unless ``update`` is false (validation measures the reward, it must not move it)."""
        n, k = scores.shape
        if group_size < 1 or n % group_size:
            raise ValueError(f"{n} completions do not split into groups of {group_size}")
        if k != len(self.names):
            raise ValueError(f"got scores for {k} cues, expected {len(self.names)}: {self.names}")
        scores = scores.to(self.reliability_ema)
        filled = fill_abstentions(scores, group_size)
        z = NORMALIZERS[self.normalize](filled, group_size)
        if self.use_reliability and update:
            self._update_reliability(z, group_size)
        w = self.weights()
        well_formed = well_formed.to(z)
        rewards = z @ w
        if self.format == "bonus":
            rewards = rewards + self.format_weight * well_formed
        else:
            rewards = gate_unanswered(rewards, well_formed, group_size)
        raw = weighted_raw(filled, w)
        return RewardOutput(rewards, scores, raw, self._stats(rewards, raw, scores, w, well_formed))

    def _update_reliability(self, z: Tensor, group_size: int) -> None:
        corr_sum, groups = consensus_correlation(z, group_size, self.anchor)  # (K,), (K,)
        if dist.is_available() and dist.is_initialized():
            packed = torch.stack([corr_sum, groups])  # one all-reduce: mean over all groups
            dist.all_reduce(packed)
            corr_sum, groups = packed
        seen = groups > 0  # cues with no defined correlation this step keep their EMA
        step = corr_sum / groups.clamp(min=1)
        ema = self.momentum * self.reliability_ema + (1 - self.momentum) * step
        ema = torch.where(self.reliability_initialised, ema, step)  # first sight: no bias to 0
        self.reliability_ema.copy_(torch.where(seen, ema, self.reliability_ema))
        self.reliability_initialised |= seen

    def _stats(self, rewards: Tensor, raw: Tensor, scores: Tensor, w: Tensor,
               well_formed: Tensor) -> dict[str, float]:
        head = torch.stack([rewards.mean(), raw.nanmean(), well_formed.mean()])
        per_cue = torch.stack([scores.nanmean(0), w, self.reliability_ema,
                               scores.isnan().sum(0).to(w.dtype)])  # (4, K)
        values = torch.cat([head, per_cue.flatten()]).tolist()  # one device sync
        keys = ["reward", "reward_raw", "format_rate"] + [
            f"{kind}/{name}" for kind in ("reward", "weight", "reliability", "abstain")
            for name in self.names]
        return dict(zip(keys, values))


def _build(name: str, encoder: TextEncoder) -> Cue:
    cls = CUES[name]
    return cls(encoder=encoder) if cls.uses_encoder else cls()


def _check(names: list[str], priors: dict[str, float], momentum: float, tau: float,
           floor: float, format_weight: float) -> tuple[list[str], list[float]]:
    """Cross-field validation with errors that say how to fix the config."""
    valid = ", ".join(CUES)
    for name in [*names, *priors]:
        if name not in CUES:
            raise ConfigError(f"unknown cue {name!r}; valid cues: {valid}")
    if len(set(names)) != len(names):
        raise ConfigError(f"cue listed twice in {names}")
    if not names:
        raise ConfigError(f"model.reward.cues is empty: enable at least one cue ({valid})")
    bad = {k: v for k, v in priors.items() if not (v > 0 and math.isfinite(v))}
    if bad:
        raise ConfigError(f"priors must be finite and > 0, got {bad}; to disable a cue, leave it "
                          f"out of `cues`")
    if not 0 <= momentum < 1 or tau <= 0 or not 0 <= floor * len(names) <= 1:
        raise ConfigError(f"need 0 <= momentum < 1, tau > 0 and 0 <= floor·K <= 1; got "
                          f"momentum={momentum}, tau={tau}, floor={floor}, K={len(names)}")
    return names, [priors.get(n, 1.0) for n in names]
