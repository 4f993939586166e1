"""The self-reward: cue scores -> a reliability-weighted, group-normalized reward (docs/design.md).

The maths lives in pure tensor functions at the top; ``SelfReward`` only wires cues, the user's
reward functions, the encoder and the reliability state together. Shape letters: B groups, G
completions per group, N = B*G, K reward columns (the enabled cues, then the functions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn

from srmcr.cues import CUE_NAMES, CUES, Cue, CueInputs, ScoreMean
from srmcr.encoder import TextEncoder
from srmcr.errors import require
from srmcr.reward_functions import Records, RewardFunction, RewardFunctionArgs

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout

EPS = 1e-6  # z = (s − mean_g) / (std_g + 1e-6): a flat group stays finite
# The default recipe (docs/reward.md): the five SR-MCR cues plus the group's vote share of each
# answer, which also anchors the reliability weights; chosen by within-group AUC on shapes:val.
DEFAULT_CUES: tuple[str, ...] = (*CUE_NAMES, "answer_support")
AUTO_ANCHOR = "answer_support"


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
    rewards: Tensor  # (N,) Σ w_k z_k, gated: what advantages come from
    scores: Tensor  # (N, K) raw column scores, NaN = abstain
    raw: Tensor  # (N,) Σ w_k s_k: the interpretable raw reward, for logging
    stats: dict[str, float]  # log keys without the "train/" prefix


class SelfReward(nn.Module):
    """Reliability-weighted, group-normalized self-reward from the cues and the user's reward
    functions (docs/design.md, "Reward").

    Per step, ``score`` computes every column once: each enabled cue from the rollout and the
    ``CueInputs`` it takes (``needs``: the caller computes only those), each function from the
    rollout and the ``Records``. ``combine`` turns the scores into rewards. Each column is also
    the running mean of the scores given to ``update_means`` (``val/reward/<name>``).

    Checkpoints hold only the reliability state (``reliability_ema``, ``reliability_initialised``
    buffers); the encoder is not a submodule and the running means are not persistent.

    Args:
        cues: the enabled cues, by name: the five SR-MCR cues (semantic_alignment,
            lexical_fidelity, non_redundancy, visual_grounding, step_consistency) or any other
            cue of srmcr/cues/ (answer_support, answer_agreement, self_certainty, ...: see
            configs/recipes/ and docs/reward.md); a wrong name lists them all. Default: the five
            + answer_support. Ablate one by leaving it out, e.g.
            ``--model.reward.cues='[semantic_alignment,lexical_fidelity,non_redundancy,
            step_consistency]'`` (one flag, no spaces). May be empty when ``functions`` are given.
        functions: the user's reward functions, each ``{path: "mypkg.rewards:brevity", weight:
            0.5, uses_labels: false}`` (``RewardFunctionArgs``). ``path``: ``module:function``,
            called once per step as ``fn(prompts, completions, id=[...], source=[...])`` (the
            N questions, each repeated G times, the N completions, and each completion's record
            fields), returning one number per completion, None or NaN to abstain; the
            function's name is its column's (``train/reward/<name>``). ``weight`` (1.0): its
            prior, beside the cues'. ``uses_labels`` (false): also pass ``answer=[...]``, the
            records' labels; the run then trains on labels, it is not label-free (for controls
            such as an oracle). Each function is a column like a cue: group-normalized and
            reliability-weighted.
        priors: prior weight per cue name (> 0; default 1.0 each). Priors of cues not enabled
            are ignored, so one YAML of priors serves every ablation. A function's prior is its
            ``weight``.
        reliability: weight the columns by their agreement with a reference (``anchor``);
            false = normalized priors (the fixed weights of recipes that sum their rewards).
        anchor: the column whose within-group ranking the others' reliability is measured
            against: each weight grows with its column's correlation with the anchor inside the
            groups; a named anchor must be enabled (a cue or a function). ``auto``:
            answer_support, the group's vote for each answer, when it is enabled, else the
            consensus (the mean of the other columns), which cues sharing a bias inflate.
        momentum: EMA momentum of the reliability: how many steps (about 1 / (1 − momentum))
            a cue's weight remembers.
        tau: temperature of the weights, w_k ∝ prior_k · exp(ρ_k / tau).
        floor: minimum weight of an enabled column, so no column is silenced before it can
            recover (needs floor · K <= 1).
        encoder_model: sentence-transformers folder or hub id for E(x); null = packaged MiniLM.
        encoder_batch_size: most texts per encoder forward pass; lower it if the encoder runs
            out of memory.
    """

    def __init__(self, cues: Sequence[str] = DEFAULT_CUES,
                 functions: Sequence[RewardFunctionArgs] = (),
                 priors: dict[str, float] | None = None, reliability: bool = True,
                 anchor: str = "auto", momentum: float = 0.9, tau: float = 0.5,
                 floor: float = 0.05, encoder_model: str | None = None,
                 encoder_batch_size: int = 64) -> None:
        super().__init__()
        cue_names, priors = list(cues), priors or {}
        _check_cues(cue_names, priors, bool(functions))
        self._encoder = TextEncoder(encoder_model, encoder_batch_size)
        self.cues = nn.ModuleDict({n: _build(n, self._encoder) for n in cue_names})
        # A list, not a dict: a function may be named like a ModuleDict method ("values").
        self.functions = nn.ModuleList([RewardFunction(f, f"reward.functions[{i}]")
                                        for i, f in enumerate(functions)])
        self.names = [*cue_names, *(f.name for f in self.functions)]
        if anchor == "auto":
            anchor = AUTO_ANCHOR if AUTO_ANCHOR in self.names else None
        _check_columns(self.names, [f.args.weight for f in self.functions], anchor, momentum,
                       tau, floor)
        self.anchor = None if anchor is None else self.names.index(anchor)
        self.use_reliability = reliability and len(self.names) > 1  # one column: no agreement
        self.momentum, self.tau, self.floor = momentum, tau, floor
        prior_values = [priors.get(n, 1.0) for n in cue_names] + [
            f.args.weight for f in self.functions]
        # Priors come from the config, not the checkpoint: not persistent.
        self.register_buffer("log_prior", torch.tensor(prior_values).log(), persistent=False)
        self.register_buffer("reliability_ema", torch.zeros(len(self.names)))  # ρ_k
        self.register_buffer("reliability_initialised",
                             torch.zeros(len(self.names), dtype=torch.bool))

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
    def needs(self) -> frozenset[str]:
        """The ``CueInputs`` fields the enabled cues take: the caller computes these, no others."""
        return frozenset(n for cue in self.cues.values() for n in cue.needs)

    @property
    def uses_labels(self) -> bool:
        """Whether a reward function reads the records' labels (``Records.answers``): the
        caller passes them only then."""
        return any(f.args.uses_labels for f in self.functions)

    def weights(self) -> Tensor:  # (K,)
        if not self.use_reliability:
            return torch.softmax(self.log_prior, -1)
        return floored_weights(self.log_prior + self.reliability_ema / self.tau, self.floor)

    @torch.no_grad()
    def forward(self, rollout: Rollout, inputs: CueInputs = CueInputs(),
                records: Records | None = None) -> RewardOutput:
        """``score`` the rollout, then ``combine`` (the reliability learns from it)."""
        return self.combine(self.score(rollout, inputs, records), rollout.well_formed,
                            rollout.group_size)

    @torch.no_grad()
    def score(self, rollout: Rollout, inputs: CueInputs = CueInputs(),
              records: Records | None = None) -> Tensor:  # (N, K), NaN = abstain
        """Raw scores of every column, each computed once; nothing changes (``update_means``
        adds them to the running means)."""
        device = self.reliability_ema.device
        self._encoder.device = device  # follow the module, wherever Lightning moved it
        texts = [t for cue in self.cues.values() for t in cue.texts(rollout)]
        with self._encoder.step(texts):  # one batched encoder call for every text cue
            columns = [_score_cue(cue, rollout, inputs) for cue in self.cues.values()]
        columns += [f.score(rollout, records) for f in self.functions]
        return torch.stack([c.to(device) for c in columns], -1)

    def update_means(self, scores: Tensor) -> None:  # (N, K)
        """Add scores from ``score`` to each column's running mean."""
        for mean, column in zip(self._means(), scores.unbind(-1)):
            mean.update(column)

    def means(self) -> dict[str, Tensor]:
        """Each column's mean score since ``reset_means``, summed across ranks (NaN if none)."""
        return {name: mean.compute() for name, mean in zip(self.names, self._means())}

    def reset_means(self) -> None:
        for mean in self._means():
            mean.reset()

    def _means(self) -> list[ScoreMean]:
        return [*self.cues.values(), *self.functions]

    @torch.no_grad()
    def combine(self, scores: Tensor, well_formed: Tensor, group_size: int,
                update: bool = True) -> RewardOutput:
        """The reward of raw scores (N, K) and well_formed (N,); updates the reliability EMA
        unless ``update`` is false (validation measures the reward, it must not move it)."""
        n, k = scores.shape
        if group_size < 1 or n % group_size:
            raise ValueError(f"{n} completions do not split into groups of {group_size}")
        if k != len(self.names):
            raise ValueError(f"got scores for {k} columns, expected {len(self.names)}: "
                             f"{self.names}")
        scores = scores.to(self.reliability_ema)
        filled = fill_abstentions(scores, group_size)
        z = group_zscores(filled, group_size)
        if self.use_reliability and update:
            self._update_reliability(z, group_size)
        w = self.weights()
        well_formed = well_formed.to(z)
        rewards = gate_unanswered(z @ w, well_formed, group_size)
        raw = weighted_raw(filled, w)
        return RewardOutput(rewards, scores, raw, self._stats(rewards, raw, scores, w, well_formed))

    def _update_reliability(self, z: Tensor, group_size: int) -> None:
        corr_sum, groups = consensus_correlation(z, group_size, self.anchor)  # (K,), (K,)
        if dist.is_available() and dist.is_initialized():
            packed = torch.stack([corr_sum, groups])  # one all-reduce: mean over all groups
            dist.all_reduce(packed)
            corr_sum, groups = packed
        seen = groups > 0  # columns with no defined correlation this step keep their EMA
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


def _score_cue(cue: Cue, rollout: Rollout, inputs: CueInputs) -> Tensor:  # (N,)
    """``cue.score`` with the ``CueInputs`` its signature names."""
    given = {name: getattr(inputs, name) for name in cue.needs}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(f"{cue.name} needs CueInputs.{missing[0]}: compute it before scoring "
                         f"(SelfReward.needs lists what the enabled cues take)")
    return cue.score(rollout, **given)


def _check_cues(names: list[str], priors: dict[str, float], has_functions: bool) -> None:
    """Cue names and priors, before anything is built."""
    valid = ", ".join(sorted(CUES))
    unknown = [n for n in names if n not in CUES]
    unknown_prior = [n for n in priors if n not in CUES]
    twice = sorted({n for n in names if names.count(n) > 1})
    bad = {k: v for k, v in priors.items() if not (v > 0 and math.isfinite(v))}
    require({
        f"reward.cues: unknown cue {_first(unknown)}; valid cues: {valid}": not unknown,
        f"reward.priors: unknown cue {_first(unknown_prior)}; valid cues: {valid}":
            not unknown_prior,
        f"reward.cues={names}: {_first(twice)} is listed twice; list each cue once": not twice,
        f"reward.cues is empty and reward.functions gives no function: enable at least one cue "
        f"({valid}) or function": bool(names) or has_functions,
        f"reward.priors={bad}: set finite priors > 0; to disable a cue, leave it out of "
        f"reward.cues": not bad,
    })


def _check_columns(names: list[str], weights: list[float], anchor: str | None,
                   momentum: float, tau: float, floor: float) -> None:
    """Checks across cues and functions, once the functions are loaded."""
    functions = names[len(names) - len(weights):]
    taken = sorted({n for n in functions if n in CUES or n in ("reward", "well_formed")
                    or names.count(n) > 1})
    bad = [w for w in weights if not (w > 0 and math.isfinite(w))]
    k = len(names)
    require({
        f"reward.functions: the name {_first(taken)} is taken (by a cue, another function or a "
        f"log key): each reward column needs its own; wrap the function under another "
        f"name": not taken,
        f"reward.functions: weight={_first(bad)}: set a finite weight > 0; to disable a "
        f"function, leave it out": not bad,
        f"reward.anchor={anchor!r} is not an enabled cue or function; add it to reward.cues or "
        f"set anchor: auto": anchor is None or anchor in names,
        f"reward.momentum={momentum}: set it in [0, 1)": 0 <= momentum < 1,
        f"reward.tau={tau}: set it > 0": tau > 0,
        f"reward.floor={floor} with {k} reward columns: set 0 <= floor <= 1/{k}":
            0 <= floor * k <= 1,
    })


def _first(values: list) -> str:  # the first offender, for a one-line message
    return repr(values[0]) if values else ""
