"""Within-group AUC, bootstrap interval, maj@G, the validity metric and the pre-flight verdict."""

import math

import pytest
import torch

from srmcr.validity import (
    Headroom,
    RewardValidity,
    SignalSummary,
    ValidityBatch,
    best_of_group,
    bootstrap_interval,
    format_report,
    group_auc,
    headroom,
    majority_correct,
    summarize,
    verdict,
)

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


def _batch(reward, well_formed, correct, agree, greedy=None) -> ValidityBatch:
    signals = torch.tensor([reward, well_formed], dtype=torch.float).T
    correct = torch.tensor(correct, dtype=torch.bool)
    return ValidityBatch(2, ["reward", "well_formed"], signals, correct,
                         majority_correct(torch.tensor(agree), correct, 2),
                         None if greedy is None else torch.tensor(greedy, dtype=torch.bool))


def test_headroom_pairs_majority_with_greedy_question_by_question():
    majority = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    greedy = torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)
    got = headroom(majority, greedy, samples=500)  # per question: 0, +1, -1, 0, +1
    assert (got.lead, got.fixed, got.broken, got.questions) == (pytest.approx(0.2), 2, 1, 5)
    assert -1 <= got.low < 0.2 < got.high <= 1
    same = headroom(majority, majority, samples=50)  # no question differs: no lead, no spread
    assert (same.lead, same.low, same.high, same.fixed, same.broken) == (0, 0, 0, 0, 0)


def test_best_of_group_takes_the_top_pick_shares_ties_and_falls_back_on_abstentions():
    scores = torch.tensor([0.9, 0.1, 0.3,   # the top pick (0.9) is right
                           0.2, 0.8, 0.8,   # two tied at the top: one right, one wrong -> 0.5
                           NAN, 0.1, NAN,   # abstentions never win: the 0.1 (wrong) is picked
                           NAN, NAN, NAN])  # all abstain: a random pick, the group's mean 1/3
    correct = torch.tensor([1, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    assert best_of_group(scores, correct, 3).tolist() == pytest.approx([1, 0.5, 0, 1 / 3])


def test_summarize_gives_every_signal_its_best_of_group_margin_over_greedy():
    # reward picks: a -> row 0 (right), a' -> row 2 or 3 (tied, both right), b -> row 1
    # (wrong), b' -> rows 2/3 tied (both right); greedy [0, 1 | 1, 0].
    a = _batch([0.9, 0.1, 0.3, 0.3], [1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1], greedy=[0, 1])
    b = _batch([0.2, 0.8, 0.5, 0.5], [1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 1, 1], greedy=[1, 0])
    margins = summarize([a, b], samples=100)["margins"]
    reward = margins["reward"]  # per question: 1-0, 1-1, 0-1, 1-0 -> +1, 0, -1, +1
    assert (reward.lead, reward.fixed, reward.broken, reward.questions) == (0.25, 2, 1, 4)
    # well_formed ties everywhere: each pick is the group's mean 0.5, 1, 0, 1 -> +.5, 0, -1, +1
    assert margins["well_formed"].lead == pytest.approx(0.125)
    no_greedy = _batch([0.2, 0.8, 0.5, 0.5], [1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 1, 1])
    assert summarize([a, no_greedy], samples=100)["margins"] is None


def test_validity_metric_pairs_majority_with_greedy():
    a = _batch([0.9, 0.1, 0.3, 0.3], [1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1], greedy=[0, 1])
    b = _batch([0.2, 0.8, 0.5, 0.5], [1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 0, 0], greedy=[1, 1])
    metric = RewardValidity(["reward", "well_formed"])
    metric.update(a)
    metric.update(b)
    # maj@2 [1, 1 | 0, 0] against greedy [0, 1 | 1, 1]: +1, 0, -1, -1 over 4 questions.
    assert metric.compute()["majority_lead"].item() == pytest.approx(-1 / 4)


def test_summarize_pairs_only_when_every_batch_has_greedy():
    a = _batch([0.9, 0.1, 0.3, 0.3], [1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1], greedy=[0, 1])
    b = _batch([0.2, 0.8, 0.5, 0.5], [1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 1, 1], greedy=[0, 0])
    lead = summarize([a, b], samples=100)["headroom"]  # maj@2 [1, 1, 0, 1] vs greedy [0, 1, 0, 0]
    assert (lead.lead, lead.fixed, lead.broken, lead.questions) == (0.5, 2, 0, 4)
    no_greedy = _batch([0.2, 0.8, 0.5, 0.5], [1, 1, 1, 1], [0, 0, 1, 1], [1, 0, 1, 1])
    assert summarize([a, no_greedy], samples=100)["headroom"] is None  # e.g. an old --save file


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
    assert "majority_lead" not in got  # no greedy correctness to pair with
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


NOISY_LEAD = Headroom(0.001, -0.02, 0.021, 40, 39, 1024)  # warm:small at top-p 0.5, roughly
CLEAR_LEAD = Headroom(0.05, 0.03, 0.07, 80, 29, 1024)
VERDICTS += [
    ({**_summary(0.45, 0.6, 0.5), "headroom": NOISY_LEAD}, 0.45, "NO-GO: ",
     "the reward's AUC interval", "a no-go stays one, whatever the lead"),
]


def test_a_clear_lead_adds_no_caveat():
    line = verdict({**_summary(0.6, 0.7, 0.5), "headroom": CLEAR_LEAD}, 0.45)
    assert line.startswith("GO: ") and "noise" not in line


MARGIN_VERDICTS = [
    (CLEAR_LEAD, 0.45, 0.5, "GO: the reward's best-of-8 beats greedy by +5.0 points (95% "
     "interval [+3.0, +7.0])", "its picks beat greedy: go, whatever the AUC"),
    (NOISY_LEAD, 0.6, 0.7, "NO-GO: the reward's best-of-8 against greedy is +0.1 points (95% "
     "interval [-2.0, +2.1]): its picks are no better", "a margin within noise: no-go"),
    (Headroom(-0.05, -0.08, -0.02, 20, 71, 1024), 0.6, 0.7, "NO-GO: the reward's best-of-8 "
     "against greedy is -5.0 points", "its picks are worse than greedy"),
]


@pytest.mark.parametrize(("margin", "low", "high", "says", "reason"), MARGIN_VERDICTS,
                         ids=[v[4] for v in MARGIN_VERDICTS])
def test_verdict_with_paired_greedy_reads_the_rewards_margin(margin, low, high, says, reason):
    summary = {**_summary(low, high, 0.5), "margins": {"reward": margin}}
    assert verdict(summary, 0.45).startswith(says)


def test_report_has_a_margin_column_when_paired():
    summary = {**_summary(0.6, 0.7, 0.5), "questions": 1024, "sample_accuracy": 0.4,
               "mixed_groups": 300, "headroom": CLEAR_LEAD,
               "margins": {"reward": CLEAR_LEAD, "lexical_fidelity": NOISY_LEAD}}
    text = format_report(summary, 0.45)
    assert "best-of-8 - greedy" in text
    assert "+0.050  [+0.030, +0.070]" in text.splitlines()[7]  # the reward's row


def test_report_prints_the_paired_lead():
    summary = {**_summary(0.6, 0.7, 0.5), "questions": 1024, "sample_accuracy": 0.4,
               "mixed_groups": 300, "headroom": CLEAR_LEAD}
    assert ("maj@8 - greedy:   +0.050  [+0.030, +0.070] over 1024 paired questions: the majority "
            "fixes 80 and breaks 29") in format_report(summary, 0.45)
    assert "- greedy" not in format_report({**summary, "headroom": None}, 0.45)


@pytest.mark.parametrize(("summary", "greedy", "prefix", "says", "reason"), VERDICTS,
                         ids=[v[4] for v in VERDICTS])
def test_verdict(summary, greedy, prefix, says, reason):
    line = verdict(summary, greedy)
    assert line.startswith(prefix) and says in line
