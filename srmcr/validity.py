"""Reward validity: does a label-free signal rank the right completions of a group above the wrong?

docs/design.md, invariant 2. Labels only ever measure here (validation, pre-flight), never train.
The figure is the within-group AUC against correctness: over groups holding both right and wrong
completions, P(signal of a right one > signal of a wrong one), ties counting half; the AUC of a
set of groups is the mean of its groups' AUCs, so every question weighs the same and the 95%
interval comes from resampling questions (``bootstrap_interval``). A pair where either signal
is NaN (the cue abstains) is left out.

Shape letters: B groups, G completions per group, N = B*G, S signals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import Metric

from srmcr.cues.answer_agreement import AnswerAgreement, AnswerSupport
from srmcr.cues.answer_certainty import AnswerCertainty
from srmcr.cues.self_certainty import SelfCertainty

if TYPE_CHECKING:  # the rollout module imports transformers: seconds
    from srmcr.rollout import Rollout

NAN = float("nan")
# Signals measured beside the reward's own cues, whether the reward uses them or not: cheap
# (no model pass) and the usual candidates for a reward (docs/reward.md).
DIAGNOSTICS = ("well_formed", "answer_agreement", "answer_support", "self_certainty",
               "answer_certainty")


def group_auc(scores: Tensor, correct: Tensor, group_size: int) -> Tensor:  # (N,), (N,) -> (B,)
    """Per group: the share of (right, wrong) pairs the signal orders right, ties half; NaN
    where the group has no such pair with finite scores (all right, all wrong, or abstentions)."""
    s = scores.detach().double().view(-1, group_size)  # (B, G)
    ok = ~s.isnan()
    right = correct.bool().view(-1, group_size) & ok
    wrong = ~correct.bool().view(-1, group_size) & ok
    diff = s[:, :, None] - s[:, None, :]  # (B, G, G): row i right, column j wrong
    pairs = right[:, :, None] & wrong[:, None, :]
    wins = torch.where(diff > 0, 1.0, torch.where(diff == 0, 0.5, 0.0)).double()
    count = pairs.sum((1, 2))
    auc = torch.where(pairs, wins, 0.0).sum((1, 2)) / count.clamp(min=1)
    return torch.where(count > 0, auc, NAN)


def bootstrap_interval(per_group: Tensor, samples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of the finite ``per_group`` values, resampling groups
    (questions) with replacement; (NaN, NaN) without any finite value."""
    values = per_group[~per_group.isnan()].double()
    if len(values) == 0:
        return NAN, NAN
    g = torch.Generator().manual_seed(seed)
    means = values[torch.randint(len(values), (samples, len(values)), generator=g)].mean(1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return lo, hi


def majority_correct(agrees: Tensor, correct: Tensor, group_size: int) -> Tensor:  # (N,) -> (B,)
    """maj@G per group: whether the group's majority answer is right. ``agrees`` marks the
    completions that give the majority answer (``answer_agreement``); a group without an answer
    has none and counts as wrong."""
    hit = agrees.bool() & correct.bool()
    return hit.view(-1, group_size).any(1)


@dataclass
class ValidityBatch:
    """G sampled completions per labelled question, with every signal's scores.

    ``signals`` holds the training reward first (``names[0] == "reward"``), then each enabled
    cue, then diagnostics the reward may not use (``well_formed``, ``answer_agreement``,
    ``self_certainty``)."""

    group_size: int  # G
    names: list[str]  # (S,)
    signals: Tensor  # (N, S) NaN = abstain
    correct: Tensor  # (N,) bool
    majority: Tensor  # (B,) bool: maj@G
    greedy: Tensor | None = None  # (B,) bool: the question's greedy answer is right

    def aucs(self) -> Tensor:  # (S, B)
        return torch.stack([group_auc(self.signals[:, k], self.correct, self.group_size)
                            for k in range(len(self.names))])


def signal_names(cue_names: Sequence[str]) -> list[str]:
    """The sampled validation's signals: the reward, its cues, then the other diagnostics."""
    return ["reward", *cue_names, *(n for n in DIAGNOSTICS if n not in cue_names)]


def validity_batch(rollout: Rollout, rewards: Tensor, scores: Tensor, cue_names: Sequence[str],
                   correct: Tensor, greedy: Tensor | None = None) -> ValidityBatch:
    """A ``ValidityBatch`` from a sampled rollout: its rewards (N,), raw cue scores (N, K),
    correctness (N,), the diagnostics computed here, and (B,) whether each question's greedy
    answer is right (pairs maj@G with greedy question by question)."""
    agree = AnswerAgreement().score(rollout)
    extra = {"well_formed": rollout.well_formed, "answer_agreement": agree,
             "answer_support": AnswerSupport().score(rollout),
             "self_certainty": SelfCertainty().score(rollout),
             "answer_certainty": AnswerCertainty().score(rollout)}
    names = signal_names(cue_names)
    columns = [rewards, *scores.unbind(-1), *(extra[n] for n in names[1 + len(cue_names):])]
    signals = torch.stack([c.float().cpu() for c in columns], -1)
    G = rollout.group_size
    return ValidityBatch(G, names, signals, correct.bool(),
                         majority_correct(agree.cpu(), correct, G),
                         None if greedy is None else greedy.bool().cpu())


class RewardValidity(Metric):
    """Validation sums for ``val/sample_accuracy`` (mean@G), ``val/majority_accuracy`` (maj@G),
    ``val/majority_lead`` (maj@G - greedy on the same questions), ``val/reward_auc``,
    ``val/auc/<signal>`` and ``val/mixed_groups`` (groups holding both right and wrong
    completions), summed across ranks by torchmetrics."""

    full_state_update = False

    def __init__(self, names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = list(names)
        zeros = torch.zeros(len(self.names), dtype=torch.float64)
        self.add_state("auc_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("auc_groups", default=zeros.clone(), dist_reduce_fx="sum")
        for name in ("sample_correct", "samples", "majority_correct", "groups", "mixed",
                     "lead_sum", "paired"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64),
                           dist_reduce_fx="sum")

    def update(self, batch: ValidityBatch) -> None:
        if batch.names != self.names:
            raise ValueError(f"signals {batch.names} differ from the metric's {self.names}")
        aucs = batch.aucs()  # (S, B)
        defined = ~aucs.isnan()
        self.auc_sum += torch.where(defined, aucs, 0.0).sum(1).to(self.auc_sum)
        self.auc_groups += defined.sum(1).to(self.auc_groups)
        correct = batch.correct.view(-1, batch.group_size)
        self.sample_correct += float(correct.sum())
        self.samples += correct.numel()
        self.majority_correct += float(batch.majority.sum())
        self.groups += len(batch.majority)
        self.mixed += float((correct.any(1) & ~correct.all(1)).sum())
        if batch.greedy is not None:
            self.lead_sum += float(batch.majority.double().sum() - batch.greedy.double().sum())
            self.paired += len(batch.greedy)

    def compute(self) -> dict[str, Tensor]:
        """``sample_accuracy``, ``majority_accuracy``, ``mixed_groups``, ``reward_auc`` and
        ``auc/<signal>`` (NaN where no group was mixed), and ``majority_lead`` where batches
        carried greedy correctness; {} when nothing was sampled."""
        if self.groups == 0:
            return {}
        aucs = self.auc_sum / self.auc_groups  # 0/0 = NaN: no mixed group
        out = {"sample_accuracy": self.sample_correct / self.samples,
               "majority_accuracy": self.majority_correct / self.groups,
               "mixed_groups": self.mixed}
        if self.paired > 0:
            out["majority_lead"] = self.lead_sum / self.paired
        for name, auc in zip(self.names, aucs):
            out["reward_auc" if name == "reward" else f"auc/{name}"] = auc
        return out


@dataclass
class SignalSummary:
    auc: float  # mean over mixed groups
    low: float  # 95% bootstrap interval over questions
    high: float
    groups: int  # mixed groups where the signal is defined


@dataclass
class Headroom:
    """A signal's self-correctable margin: the accuracy of the completion it ranks first in each
    group (best-of-G) minus greedy accuracy, paired question by question. Training toward the
    signal can lift greedy accuracy by about this much at most; for answer agreement it is
    maj@G minus greedy."""

    lead: float  # mean over questions of best-of-G - greedy (each in [-1, 1])
    low: float  # 95% bootstrap interval over questions
    high: float
    fixed: int  # questions where the signal's pick beats greedy
    broken: int  # and where it does worse
    questions: int


def headroom(best: Tensor, greedy: Tensor, samples: int = 2000) -> Headroom:
    """``Headroom`` of paired (B,) values: the correctness of the signal's pick (bool, or the
    expected correctness of a tied pick) and of the greedy answer per question."""
    diff = best.double() - greedy.double()
    lo, hi = bootstrap_interval(diff, samples)
    return Headroom(float(diff.mean()), lo, hi, int((diff > 0).sum()), int((diff < 0).sum()),
                    len(diff))


def best_of_group(scores: Tensor, correct: Tensor, group_size: int) -> Tensor:  # (N,) -> (B,)
    """Per group: the correctness of the completion ``scores`` ranks first; completions tied
    at the top share the pick (their mean correctness: a random tie-break's expectation). Where
    the signal abstains (NaN) on every completion, the pick is random: the group's mean."""
    s = scores.detach().double().view(-1, group_size)  # (B, G)
    c = correct.double().view(-1, group_size)
    top = s == torch.where(s.isnan(), -torch.inf, s).amax(1, keepdim=True)  # NaN is never top
    none = ~top.any(1, keepdim=True)
    top = top | none
    return (c * top).sum(1) / top.sum(1)


def summarize(batches: Sequence[ValidityBatch], samples: int = 2000) -> dict[str, Any]:
    """Pre-flight figures over a validation pass: mean@G, maj@G, mixed groups, every signal's
    AUC with its 95% interval (``SignalSummary``) and, where the batches carry greedy
    correctness, every signal's best-of-G margin over greedy (``margins``; the vote's is maj@G's
    ``headroom``), else None."""
    if not batches:
        raise ValueError("no labelled question was sampled: give validation data with answers "
                         "(data.val) and sampling.val_group_size >= 2")
    names, G = batches[0].names, batches[0].group_size
    aucs = torch.cat([b.aucs() for b in batches], dim=1)  # (S, B)
    correct = torch.cat([b.correct for b in batches])
    majority = torch.cat([b.majority for b in batches])
    signals = {}
    for name, per_group in zip(names, aucs):
        lo, hi = bootstrap_interval(per_group, samples)
        finite = per_group[~per_group.isnan()]
        signals[name] = SignalSummary(float(finite.mean()) if len(finite) else NAN, lo, hi,
                                      len(finite))
    lead, margins = None, None
    if all(b.greedy is not None for b in batches):
        greedy = torch.cat([b.greedy for b in batches])
        lead = headroom(majority, greedy, samples)
        scores = torch.cat([b.signals for b in batches])  # (N, S)
        margins = {name: headroom(best_of_group(scores[:, k], correct, G), greedy, samples)
                   for k, name in enumerate(names)}
    per_question = correct.view(-1, G)
    return {"group_size": G, "questions": len(majority),
            "sample_accuracy": float(per_question.float().mean()),
            "majority_accuracy": float(majority.float().mean()),
            "mixed_groups": int((per_question.any(1) & ~per_question.all(1)).sum()),
            "signals": signals, "headroom": lead, "margins": margins}


def verdict(summary: dict[str, Any], greedy_accuracy: float) -> str:
    """One line. With paired greedy answers: GO when the reward's best-of-G margin over greedy
    has its 95% interval above 0 (its own picks beat greedy: training toward it has something
    to gain), NO-GO otherwise. Without them (an old ``--save`` file): GO when the reward's AUC
    interval is above 0.5 and maj@G >= greedy. Either way it names the cues that point the
    wrong way (AUC interval below 0.5)."""
    reward: SignalSummary = summary["signals"]["reward"]
    wrong_way = [n for n, s in summary["signals"].items()
                 if n != "reward" and s.high < 0.5]
    tail = f"; pointing the wrong way (AUC interval below 0.5): {', '.join(wrong_way)}" \
        if wrong_way else ""
    margin: Headroom | None = (summary.get("margins") or {}).get("reward")
    if margin is not None:
        span = (f"{100 * margin.lead:+.1f} points (95% interval [{100 * margin.low:+.1f}, "
                f"{100 * margin.high:+.1f}])")
        if margin.low > 0:
            return (f"GO: the reward's best-of-{summary['group_size']} beats greedy by {span}: "
                    f"training toward it can gain up to about that (AUC {reward.auc:.2f})" + tail)
        return (f"NO-GO: the reward's best-of-{summary['group_size']} against greedy is {span}: "
                "its picks are no better than the greedy answer, so training toward it has "
                "nothing to gain" + tail)
    problems = []
    if not reward.low > 0.5:
        problems.append(f"the reward's AUC interval [{reward.low:.2f}, {reward.high:.2f}] is not "
                        "above 0.5: it does not rank right answers above wrong ones")
    if summary["majority_accuracy"] < greedy_accuracy:
        problems.append(f"maj@{summary['group_size']} {summary['majority_accuracy']:.3f} < greedy "
                        f"{greedy_accuracy:.3f}: sharpening toward the group's consensus cannot "
                        "lift greedy accuracy")
    if problems:
        return "NO-GO: " + "; ".join(problems) + tail
    return (f"GO: the reward ranks right above wrong (AUC {reward.auc:.2f}, interval "
            f"[{reward.low:.2f}, {reward.high:.2f}]) and maj@{summary['group_size']} >= greedy"
            + tail)


def headroom_lines(summary: dict[str, Any]) -> list[str]:
    """The report's line for ``summary["headroom"]``; none without it."""
    lead: Headroom | None = summary.get("headroom")
    if lead is None:
        return []
    return [f"maj@{summary['group_size']} - greedy:   {lead.lead:+.3f}  [{lead.low:+.3f}, "
            f"{lead.high:+.3f}] over {lead.questions} paired questions: the majority fixes "
            f"{lead.fixed} and breaks {lead.broken} of greedy's answers (about the most "
            "sharpening toward it can gain)"]


def format_report(summary: dict[str, Any], greedy_accuracy: float) -> str:
    """The pre-flight table: accuracies, then one row per signal (AUC, and best-of-G - greedy
    where greedy answers are paired), then the verdict."""
    G = summary["group_size"]
    margins = summary.get("margins")
    lines = [f"questions: {summary['questions']} labelled, G = {G} samples each "
             f"({summary['mixed_groups']} groups hold both right and wrong answers)",
             f"greedy accuracy:   {greedy_accuracy:.3f}",
             f"mean@{G} (sampled): {summary['sample_accuracy']:.3f}",
             f"maj@{G} (majority): {summary['majority_accuracy']:.3f}",
             *headroom_lines(summary), ""]
    head = f"{'signal':<24} {'AUC':>6}  95% interval   groups"
    lines.append(head + (f"   best-of-{G} - greedy  95% interval" if margins else ""))
    for name, s in summary["signals"].items():
        row = f"{name:<24} {s.auc:>6.3f}  [{s.low:.3f}, {s.high:.3f}]  {s.groups:>5}"
        if margins:
            m = margins[name]
            row += f"   {m.lead:>+16.3f}  [{m.low:+.3f}, {m.high:+.3f}]"
        lines.append(row)
    lines += ["", verdict(summary, greedy_accuracy)]
    return "\n".join(lines)
