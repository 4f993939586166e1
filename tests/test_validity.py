"""Within-group AUC, bootstrap interval, maj@G, the validity metric and the pre-flight verdict."""

import math

import pytest
import torch

from srmcr.validity import (RewardValidity, SignalSummary, ValidityBatch, bootstrap_interval,
                            group_auc, majority_correct, summarize, verdict)

NAN = math.nan
AUC_CASES = [  # scores of ONE group, correctness, expected AUC, reason
    ([0.9, 0.1, 0.2, 0.3], [1, 0, 0, 0], 1.0, "the right one above all wrong ones"),
    ([0.1, 0.9, 0.2, 0.3], [1, 0, 0, 0], 0.0, "the right one below all wrong ones"),
    ([0.5, 0.9, 0.2, 0.5], [1, 0, 0, 0], (0 + 1 + 0.5) / 3, "one win, one loss, one tie (half)"),
    ([0.4, 0.4, 0.4, 0.4], [1, 1, 0, 0], 0.5, "all tied: chance"),
    ([0.8, 0.3, 0.6, 0.1], [1, 1, 0, 0], 3 / 4, "2 x 2 pairs: 0.8>0.6, 0.8>0.1, 0.3<0.6, 0.3>0.1"),
    ([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1], NAN, "no wrong completion: undefined"),
    ([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], NAN, "no right completion: undefined"),
    ([NAN, 0.2, 0.3, 0.9], [1, 0, 0, 1], 1.0, "an abstaining right one leaves its pairs out"),
    ([NAN, 0.2, NAN, 0.9], [1, 0, 1, 0], NAN, "every right one abstains: undefined"),
]


@pytest.mark.parametrize(("scores", "correct", "expected", "reason"), AUC_CASES,
                         ids=[c[3] for c in AUC_CASES])
def test_group_auc(scores, correct, expected, reason):
    got = group_auc(torch.tensor(scores), torch.tensor(correct, dtype=torch.bool), 4)
    assert got.tolist() == pytest.approx([expected], nan_ok=True)


def test_groups_are_independent_and_the_mean_is_over_groups():
    scores = torch.tensor([0.9, 0.1, 0.1, 0.9, 0.5, 0.5])
    correct = torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool)
    assert group_auc(scores, correct, 2).tolist() == pytest.approx([1.0, 0.0, NAN], nan_ok=True)


def test_majority_correct():
    agrees = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0, 0])  # group 3 has no answer at all
    correct = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert majority_correct(agrees, correct, 3).tolist() == [True, False, False]


def test_bootstrap_interval_brackets_the_mean_and_ignores_nan():
    values = torch.tensor([0.2, 0.8, NAN, 0.6, 0.4, 0.5, 0.7, 0.3])
    lo, hi = bootstrap_interval(values, samples=500)
    assert lo < 0.5 < hi and 0.2 <= lo and hi <= 0.8
    assert bootstrap_interval(torch.tensor([0.7, 0.7]), samples=50) == pytest.approx((0.7, 0.7))
    assert all(math.isnan(x) for x in bootstrap_interval(torch.tensor([NAN])))


def _batch(reward, well_formed, correct, agree) -> ValidityBatch:
    signals = torch.tensor([reward, well_formed], dtype=torch.float).T
    correct = torch.tensor(correct, dtype=torch.bool)
    return ValidityBatch(2, ["reward", "well_formed"], signals, correct,
                         majority_correct(torch.tensor(agree), correct, 2))


def test_metric_over_batches_equals_the_pooled_summary():
    a = _batch([0.9, 0.1, 0.3, 0.3], [1, 1, 1, 0], [1, 0, 1, 1], [1, 0, 1, 1])
    b = _batch([0.2, 0.8, 0.5, 0.5], [1, 0, 1, 1], [1, 0, 0, 0], [1, 0, 1, 1])
    metric = RewardValidity(["reward", "well_formed"])
    metric.update(a)
    metric.update(b)
    got = metric.compute()
    # Mixed groups: a's first (AUC 1) and b's first (AUC 0); b's second has no right answer.
    assert got["reward_auc"].item() == pytest.approx(0.5)
    assert got["auc/well_formed"].item() == pytest.approx((0.5 + 1.0) / 2)
    assert got["sample_accuracy"].item() == pytest.approx(4 / 8)
    assert got["majority_accuracy"].item() == pytest.approx(3 / 4)
    assert got["mixed_groups"].item() == 2
    assert summarize([a, b], samples=100)["signals"]["reward"].auc == pytest.approx(0.5)
    assert RewardValidity(["reward"]).compute() == {}  # nothing sampled: nothing to log


def _summary(low, high, majority, cue_high=0.6):
    return {"group_size": 8, "majority_accuracy": majority,
            "signals": {"reward": SignalSummary((low + high) / 2, low, high, 100),
                        "lexical_fidelity": SignalSummary(cue_high - 0.05, cue_high - 0.1,
                                                          cue_high, 100)}}


VERDICTS = [
    (_summary(0.6, 0.7, 0.5), 0.45, "GO: ", "", "AUC interval above 0.5, maj@G above greedy"),
    (_summary(0.45, 0.6, 0.5), 0.45, "NO-GO: ", "the reward's AUC interval", "interval has 0.5"),
    (_summary(0.6, 0.7, 0.4), 0.45, "NO-GO: ", "maj@8 0.400 < greedy 0.450",
     "consensus below greedy"),
    (_summary(0.6, 0.7, 0.5, cue_high=0.45), 0.45, "GO: ",
     "pointing the wrong way (AUC interval below 0.5): lexical_fidelity", "names a bad cue"),
]


@pytest.mark.parametrize(("summary", "greedy", "prefix", "says", "reason"), VERDICTS,
                         ids=[v[4] for v in VERDICTS])
def test_verdict(summary, greedy, prefix, says, reason):
    line = verdict(summary, greedy)
    assert line.startswith(prefix) and says in line
