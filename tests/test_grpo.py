"""GRPO maths against hand-computed numbers (the arithmetic is in the comments)."""

import math

import pytest
import torch

from srmcr.grpo import AGGREGATIONS, group_advantages, loss_normalizer, policy_loss

LN2 = math.log(2.0)


# ---------------------------------------------------------------- advantages


def test_advantages_known_group():
    # mean 2.5; centred [-1.5, -0.5, 0.5, 1.5]; unbiased var (2.25+0.25+0.25+2.25)/3 = 5/3
    std = math.sqrt(5 / 3)  # 1.2909944
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), group_size=4)
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-6)  # ±1.161895, ±0.387298
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(adv[3], torch.tensor(1.161895), atol=1e-6, rtol=0)


def test_advantages_zero_mean_unit_std_per_group():
    torch.manual_seed(0)
    adv = group_advantages(torch.randn(12), group_size=4).view(3, 4)
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv.std(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_equal_rewards_give_exact_zero_and_no_nan():
    # Second group is flat. In float32, 0.3 - mean([0.3] * 7) = 2.98e-8, not 0: without the
    # explicit flat-group guard that would become 2.98e-8 / (std ~3e-8 + 1e-6) ~ 0.03.
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0] + [0.3] * 7)
    for scale in ("group", "batch", "none"):
        adv = group_advantages(rewards, group_size=7, scale=scale)
        assert not adv.isnan().any()
        assert (adv[7:] == 0).all(), scale
    all_flat = group_advantages(torch.full((6,), 0.7), group_size=3, scale="batch")
    assert (all_flat == 0).all()


def test_batch_and_none_scales():
    rewards = torch.tensor([0.0, 2.0, 4.0, 4.0])  # G = 2: groups [0, 2] and [4, 4]
    # Group means 1 and 4 -> centred [-1, 1, 0, 0].
    none = group_advantages(rewards, 2, "none")
    torch.testing.assert_close(none, torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    # Group std of [0, 2]: sqrt(((-1)^2 + 1^2) / 1) = sqrt(2) -> ±0.707107.
    g = 1 / (math.sqrt(2) + 1e-6)
    torch.testing.assert_close(group_advantages(rewards, 2), torch.tensor([-g, g, 0.0, 0.0]))
    # Batch std: mean 2.5, squares 6.25+0.25+2.25+2.25 = 11, /3 -> sqrt(11/3) = 1.914854,
    # so ±1 / 1.914854 = ±0.522233.
    b = 1 / (math.sqrt(11 / 3) + 1e-6)
    batch = group_advantages(rewards, 2, "batch")
    torch.testing.assert_close(batch, torch.tensor([-b, b, 0.0, 0.0]))


@pytest.mark.parametrize(
    ("n", "group_size", "scale", "match"),
    [
        (6, 4, "group", "do not split into groups of 4"),  # 6 % 4 != 0
        (4, 1, "group", "group_size must be >= 2"),  # no baseline
        (4, 2, "median", "scale must be one of"),  # unknown variant
    ],
)
def test_advantages_errors(n, group_size, scale, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(torch.zeros(n), group_size, scale)


# ---------------------------------------------------------------- clipping


def _one_token_grad(ratio: float, adv: float, clip_low=0.2, clip_high=0.2) -> tuple[float, float]:
    """Loss and d loss / d logp for a single token with the given ratio (beta = 0)."""
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 1), None, torch.tensor([adv]), torch.ones(1, 1),
                          clip_low=clip_low, clip_high=clip_high, beta=0.0)
    loss.backward()
    return loss.item(), logp.grad.item()


@pytest.mark.parametrize(
    ("ratio", "adv", "loss", "grad"),
    [
        (1.5, 1.0, -1.2, 0.0),  # A > 0 above 1 + 0.2: min(1.5, 1.2) = 1.2 is flat
        (0.5, -1.0, 0.8, 0.0),  # A < 0 below 1 - 0.2: min(-0.5, -0.8) = -0.8 is flat
        (1.1, 1.0, -1.1, -1.1),  # inside the band: d(-r*A)/dlogp = -r*A = -1.1
        (0.5, 1.0, -0.5, -0.5),  # A > 0 below the band: min(0.5, 0.8) = 0.5, unclipped
        (1.5, -1.0, 1.5, 1.5),  # A < 0 above the band: min(-1.5, -1.2) = -1.5, unclipped
    ],
)
def test_clipping_is_flat_outside_the_band(ratio, adv, loss, grad):
    got_loss, got_grad = _one_token_grad(ratio, adv)
    assert got_loss == pytest.approx(loss, abs=1e-6)
    assert got_grad == pytest.approx(grad, abs=1e-6)


def test_asymmetric_clip_high():
    # ratio 1.25, A = 1: clipped at 1 + 0.2 (flat), free under 1 + 0.28 (grad -1.25).
    assert _one_token_grad(1.25, 1.0) == pytest.approx((-1.2, 0.0), abs=1e-6)
    assert _one_token_grad(1.25, 1.0, clip_high=0.28) == pytest.approx((-1.25, -1.25), abs=1e-6)
    # clip_low stays 0.2: ratio 0.75 with A < 0 is still clipped at 0.8 -> loss 0.8, flat.
    assert _one_token_grad(0.75, -1.0, clip_high=0.28) == pytest.approx((0.8, 0.0), abs=1e-6)


def test_clip_frac():
    # ratios [1.5, 1.0, 0.5, 1.1], A = 1: only 1.5 takes the clipped term -> 1/4.
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5, 1.1]]))
    _, stats = policy_loss(logp, torch.zeros(1, 4), None, torch.ones(1), torch.ones(1, 4), beta=0.0)
    assert stats["clip_frac"].item() == pytest.approx(0.25)


def test_masked_tokens_get_exactly_zero_gradient():
    # Padding holds garbage (-inf and a huge value): no NaN, and exactly 0 gradient there.
    logp = torch.tensor([[-0.5, -float("inf"), 80.0], [-1.0, -2.0, -0.1]], requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    loss, stats = policy_loss(logp, logp.detach() - 0.05, torch.full((2, 3), -1.0),
                              torch.tensor([1.0, -1.0]), mask, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert (logp.grad[mask == 0] == 0).all()
    assert (logp.grad[mask == 1] != 0).all()


# ---------------------------------------------------------------- aggregation

# 2 x 3 ragged example, beta = 0, old_logp = 0 so ratio = exp(logp); all ratios inside the band.
# Row 0, A = 1:  ratios [0.9, 1.0, 1.1] -> -r*A = [-0.9, -1.0, -1.1]; sum -3.0, mean -1.0
# Row 1, A = -2: ratios [0.95, pad, pad] -> -0.95*(-2) = 1.9;          sum  1.9, mean  1.9
RATIOS = torch.tensor([[0.9, 1.0, 1.1], [0.95, 5.0, 5.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])
ADV = torch.tensor([1.0, -2.0])


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("grpo", (-1.0 + 1.9) / 2),  # mean of sequence means = 0.45
        ("token", (-3.0 + 1.9) / 4),  # 4 masked tokens -> -0.275
        ("dr_grpo", (-3.0 + 1.9) / (2 * 3)),  # N * T = 6 -> -0.183333
    ],
)
def test_aggregations_by_hand(aggregation, expected):
    loss, _ = policy_loss(torch.log(RATIOS), torch.zeros(2, 3), None, ADV, MASK, beta=0.0,
                          aggregation=aggregation)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_grpo_empty_sequence_counts_as_zero_not_nan():
    # A third row with no tokens: (-1.0 + 1.9 + 0) / 3 = 0.3.
    ratios = torch.cat([RATIOS, torch.ones(1, 3)])
    mask = torch.cat([MASK, torch.zeros(1, 3, dtype=MASK.dtype)])
    adv = torch.tensor([1.0, -2.0, 3.0])
    loss, _ = policy_loss(torch.log(ratios), torch.zeros(3, 3), None, adv, mask, beta=0.0,
                          aggregation="grpo")
    assert loss.item() == pytest.approx(0.3, abs=1e-6)


def test_unknown_aggregation_raises():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), None, ADV, MASK, beta=0.0,
                    aggregation="seq")


# ---------------------------------------------------------------- KL


def test_k3_by_hand():
    # ratio 1 and A = 0, so the loss is beta * mean k3. d = ref - logp = [0, ln2, -ln2]:
    # k3(0) = 1 - 0 - 1 = 0; k3(ln2) = 2 - ln2 - 1 = 0.306853; k3(-ln2) = 0.5 + ln2 - 1 = 0.193147.
    # Mean = (0 + 0.306853 + 0.193147) / 3 = 0.5 / 3; loss = 0.1 * 0.5 / 3 = 1/60.
    logp = torch.full((1, 3), -1.0)
    ref = logp + torch.tensor([[0.0, LN2, -LN2]])
    loss, stats = policy_loss(logp, logp, ref, torch.zeros(1), torch.ones(1, 3), beta=0.1)
    assert stats["kl"].item() == pytest.approx(0.5 / 3, abs=1e-6)
    assert loss.item() == pytest.approx(1 / 60, abs=1e-7)


def test_k3_is_non_negative():
    torch.manual_seed(0)
    logp, ref = -torch.rand(4, 7) * 5, -torch.rand(4, 7) * 5
    _, stats = policy_loss(logp, logp, ref, torch.zeros(4), torch.ones(4, 7), beta=1.0)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    assert (k3 >= 0).all() and stats["kl"].item() >= 0


def test_beta_zero_needs_no_reference():
    loss, stats = policy_loss(torch.log(RATIOS), torch.zeros(2, 3), None, ADV, MASK, beta=0.0)
    assert torch.isfinite(loss) and stats["kl"].item() == 0.0
    with pytest.raises(ValueError, match="ref_logp is required"):
        policy_loss(torch.log(RATIOS), torch.zeros(2, 3), None, ADV, MASK, beta=0.01)


def test_stats_are_detached():
    logp = torch.log(RATIOS).requires_grad_()
    _, stats = policy_loss(logp, torch.zeros(2, 3), torch.zeros(2, 3), ADV, MASK, beta=0.1)
    assert not any(v.requires_grad for v in stats.values())


# ---------------------------------------------------------------- micro-batching


def test_loss_normalizer_by_hand():
    # MASK: 2 sequences, 4 masked tokens, padded length 3.
    assert loss_normalizer(MASK, "grpo") == 2.0
    assert loss_normalizer(MASK, "token") == 4.0
    assert loss_normalizer(MASK, "dr_grpo") == 6.0


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_micro_batches_sum_to_the_full_loss(aggregation):
    torch.manual_seed(0)
    n, t = 6, 5
    lengths = torch.tensor([5, 3, 0, 1, 4, 2])  # ragged, one empty
    mask = (torch.arange(t) < lengths.unsqueeze(1)).long()
    old = -torch.rand(n, t) * 3
    ref = -torch.rand(n, t) * 3
    adv = torch.randn(n)
    logp = (old + 0.4 * torch.randn(n, t)).requires_grad_()  # some ratios clip
    kwargs = dict(beta=0.05, aggregation=aggregation)

    full, _ = policy_loss(logp, old, ref, adv, mask, **kwargs)
    (full_grad,) = torch.autograd.grad(full, logp)

    norm = loss_normalizer(mask, aggregation)
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 5), slice(5, 6)):
        part, _ = policy_loss(logp[rows], old[rows], ref[rows], adv[rows], mask[rows],
                              normalizer=norm, **kwargs)
        total = total + part
    (micro_grad,) = torch.autograd.grad(total, logp)

    torch.testing.assert_close(total, full)
    torch.testing.assert_close(micro_grad, full_grad)
