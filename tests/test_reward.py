"""SelfReward: abstentions, group z-scores, reliability EMA, floored weights, the format gate."""

import math

import pytest
import torch
import torch.distributed as dist
from jsonargparse import ArgumentParser

from srmcr.cues import CUE_NAMES, CueInputs
from srmcr.errors import ConfigError
from srmcr.reward import (
    SelfReward,
    consensus_correlation,
    fill_abstentions,
    floored_weights,
    gate_unanswered,
    group_zscores,
)
from tests.cues.fakes import HashingEncoder, make_rollout

NAN = math.nan
A = math.sqrt(1.5)  # population z of (0, 0.5, 1): ±0.5 / sqrt(1/6)
TEXT_CUES = ["semantic_alignment", "lexical_fidelity", "non_redundancy", "step_consistency"]


def test_fill_abstentions_uses_the_group_mean_and_leaves_all_abstaining_groups():
    s = torch.tensor([[0.2], [NAN], [0.8], [NAN], [NAN], [NAN]])
    filled = fill_abstentions(s, 3)
    assert filled[:3].flatten().tolist() == pytest.approx([0.2, 0.5, 0.8])
    assert filled[3:].isnan().all()


ZCASES = [
    ([0.0, 0.5, 1.0], [-A, 0.0, A], "population std of (0, .5, 1) is sqrt(1/6)"),
    ([0.2, NAN, 0.8], [-A, 0.0, A], "the abstention takes the group mean, then z = 0"),
    ([0.3, 0.3, 0.3], [0.0, 0.0, 0.0], "zero spread: z = 0 exactly"),
    ([NAN, NAN, NAN], [0.0, 0.0, 0.0], "whole group abstains: neutral"),
    ([0.1, 0.1 + 1e-9, 0.1], [0.0, 0.0, 0.0], "float32 rounds it flat: z = 0, not noise/eps"),
]


@pytest.mark.parametrize(("scores", "expected", "reason"), ZCASES, ids=[c[2] for c in ZCASES])
def test_group_zscores(scores, expected, reason):
    z = group_zscores(fill_abstentions(torch.tensor(scores).view(3, 1), 3), 3)
    assert z.flatten().tolist() == pytest.approx(expected, abs=1e-5)


WCASES = [
    ([0.0, 0.0, 0.0, 0.0], 0.05, [0.25] * 4, "equal logits: uniform"),
    ([1.0, 0.0, math.log(2) - 1.0], 0.05, [math.e / (1 + math.e + 2 / math.e),
                                         1 / (1 + math.e + 2 / math.e),
                                         2 / math.e / (1 + math.e + 2 / math.e)],
     "prior 2 and ρ = (.5, 0, -.5), τ = .5: floor not binding"),
    ([math.log(0.01), math.log(0.0505), math.log(0.9395)], 0.05, [0.05, 0.05, 0.9],
     "flooring the first pushes the second under: both end exactly at the floor"),
    ([math.log(0.04), math.log(0.052), math.log(0.908)], 0.05,
     [0.05, 0.052 / 0.96 * 0.95, 0.908 / 0.96 * 0.95], "the rest keep their ratios"),
]


@pytest.mark.parametrize(("logits", "floor", "expected", "reason"), WCASES,
                         ids=[c[3] for c in WCASES])
def test_floored_weights(logits, floor, expected, reason):
    w = floored_weights(torch.tensor(logits), floor)
    assert w.tolist() == pytest.approx(expected, abs=1e-6)
    assert w.sum().item() == pytest.approx(1.0) and (w >= floor - 1e-7).all()


def test_hand_computed_reliability_weights_and_rewards():
    # One group of 3, cues A, B agree, C half-agrees. z_A = z_B = A·(-1, 0, 1), z_C = A·(0, -1, 1).
    # corr(z_A, (z_B+z_C)/2) = 1.5/sqrt(2·1.5) = sqrt(3)/2, same for B; corr(z_C, z_A) = 1/2.
    reward = SelfReward(cues=["semantic_alignment", "lexical_fidelity", "non_redundancy"])
    scores = torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0]])
    out = reward.combine(scores, torch.ones(3), group_size=3)  # all well-formed: no gate
    rho = [math.sqrt(3) / 2, math.sqrt(3) / 2, 0.5]
    assert reward.reliability_ema.tolist() == pytest.approx(rho, abs=1e-5)
    e = [math.exp(r / 0.5) for r in rho]
    w = [x / sum(e) for x in e]
    assert reward.weights().tolist() == pytest.approx(w, abs=1e-5)
    z = [[-A, -A, 0.0], [0.0, 0.0, -A], [A, A, A]]
    expected = [sum(wk * zk for wk, zk in zip(w, row)) for row in z]
    assert out.rewards.tolist() == pytest.approx(expected, abs=1e-4)
    raw = [sum(wk * s for wk, s in zip(w, row)) for row in scores.tolist()]
    assert out.raw.tolist() == pytest.approx(raw, abs=1e-6)
    # Second step: EMA 0.9·ρ + 0.1·ρ_step with ρ_step = corr of a step where all agree (1).
    reward.combine(torch.tensor([[0.0] * 3, [0.5] * 3, [1.0] * 3]), torch.zeros(3), 3)
    assert reward.reliability_ema.tolist() == pytest.approx([0.9 * r + 0.1 for r in rho],
                                                            abs=1e-5)


def test_abstentions_are_neutral_and_counted():
    reward = SelfReward(cues=["semantic_alignment", "step_consistency"])
    scores = torch.tensor([[0.2, 0.9], [0.6, NAN], [0.1, NAN], [0.3, NAN]])  # G = 2
    out = reward.combine(scores, torch.zeros(4), group_size=2)
    assert out.stats["abstain/step_consistency"] == 3
    assert out.stats["abstain/semantic_alignment"] == 0
    assert out.stats["reward/step_consistency"] == pytest.approx(0.9)
    assert not out.rewards.isnan().any() and not out.raw.isnan().any()
    # Group 2 has no step consistency: its raw reward is semantic alignment alone.
    assert out.raw[2:].tolist() == pytest.approx([0.1, 0.3])


def test_noisy_cue_loses_weight_to_the_floor_while_agreeing_cues_gain():
    torch.manual_seed(0)
    reward = SelfReward(cues=TEXT_CUES)
    for _ in range(50):
        latent = torch.rand(32, 1)  # B = 8, G = 4
        agreeing = (latent + 0.1 * torch.randn(32, 3)).clamp(0, 1)
        scores = torch.cat([agreeing, torch.rand(32, 1)], 1)
        reward.combine(scores, torch.ones(32), group_size=4)
    w = reward.weights()
    assert w[3] < 0.07 and (w[:3] > 0.3).all(), w


def test_identical_completions_give_zero_z_and_no_nan():
    text = ("<think>Step 1: I see two red circles.\nStep 2: So there are two circles.</think>"
            "<answer>2</answer>")
    reward = SelfReward(cues=TEXT_CUES)
    reward.encoder = HashingEncoder()
    out = reward(make_rollout(["How many circles?"] * 4, [text] * 4, group_size=4))
    assert torch.equal(out.rewards, torch.zeros(4))  # z = 0, all well-formed: nothing gated
    assert all(math.isfinite(v) for v in out.stats.values())
    assert not reward.reliability_initialised.any()  # nothing to correlate: EMA untouched


def test_reliability_off_gives_normalized_priors():
    reward = SelfReward(cues=["semantic_alignment", "lexical_fidelity"], reliability=False,
                        priors={"semantic_alignment": 3.0, "visual_grounding": 9.0})
    for _ in range(3):
        reward.combine(torch.rand(8, 2), torch.ones(8), group_size=4)
    assert reward.weights().tolist() == pytest.approx([0.75, 0.25])


def test_one_cue_has_weight_one():
    reward = SelfReward(cues=["lexical_fidelity"])
    out = reward.combine(torch.tensor([[0.0], [1.0]]), torch.zeros(2), group_size=2)
    assert out.stats["weight/lexical_fidelity"] == 1.0
    assert out.rewards.tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)


def test_cues_are_disabled_by_leaving_them_out_and_names_are_checked():
    reward = SelfReward(cues=TEXT_CUES)
    assert reward.names == TEXT_CUES and not reward.needs
    assert SelfReward().needs == {"blank_logp"}  # visual grounding's blank-image pass
    with pytest.raises(ConfigError, match=r"^reward.cues: unknown cue 'grounding'; valid cues: "
                                          r"answer_agreement, answer_certainty, answer_support"):
        SelfReward(cues=["semantic_alignment", "grounding"])
    with pytest.raises(ConfigError, match="reward.priors: unknown cue 'novelty'"):
        SelfReward(priors={"novelty": 1.0})
    with pytest.raises(ConfigError, match="'non_redundancy' is listed twice"):
        SelfReward(cues=["non_redundancy", "non_redundancy"])
    with pytest.raises(ConfigError, match="reward.cues is empty and reward.functions gives no "
                                          "function: enable at least one"):
        SelfReward(cues=[])
    with pytest.raises(ValueError, match="leave it out"):
        SelfReward(priors={"lexical_fidelity": 0.0})
    with pytest.raises(ValueError, match="floor"):
        SelfReward(floor=0.3)


def test_one_flag_ablation_from_the_command_line():
    parser = ArgumentParser()
    parser.add_class_arguments(SelfReward, "reward")
    cfg = parser.parse_args(["--reward.cues=[lexical_fidelity,non_redundancy]",
                             "--reward.priors={lexical_fidelity: 2}"])
    reward = parser.instantiate(cfg).reward
    assert reward.names == ["lexical_fidelity", "non_redundancy"]
    assert reward.weights().tolist() == pytest.approx([2 / 3, 1 / 3])


def test_state_dict_holds_reliability_only_and_round_trips():
    reward = SelfReward()
    reward.combine(torch.rand(8, 6), torch.ones(8), group_size=4)
    state = reward.state_dict()
    assert set(state) == {"reliability_ema", "reliability_initialised"}
    fresh = SelfReward()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weights(), reward.weights())


def test_each_distinct_text_is_encoded_once_per_step_across_all_cues():
    questions = ["How many red circles?"] * 2 + ["What colour is the square?"] * 2
    texts = ["<think>Step 1: I see red circles.\nStep 2: I count two red circles.</think>"
             "<answer>2</answer>",
             "<think>Step 1: I see red circles.\nStep 2: I count three red circles.</think>"
             "<answer>3</answer>",
             "<think>The square is blue.</think><answer>blue</answer>",
             "<think></think><answer>blue</answer>"]
    fake = HashingEncoder()
    reward = SelfReward(cues=TEXT_CUES)
    reward.encoder = fake
    reward(make_rollout(questions, texts, group_size=2))
    assert len(fake.calls) == 1  # the priming call; every cue then hit the cache
    assert len(fake.encoded) == len(set(fake.encoded)) and "" not in fake.encoded
    assert set(fake.encoded) == {*questions[:3], "I see red circles.", "I count two red circles.",
                                 "I count three red circles.", "2", "3", "blue",
                                 "I see red circles. I count two red circles.",
                                 "I see red circles. I count three red circles.",
                                 "The square is blue."}
    reward(make_rollout(questions, texts, group_size=2))
    assert len(fake.calls) == 2  # the cache was cleared at the end of the step
    assert reward.encoder.device == reward.reliability_ema.device


def test_visual_grounding_takes_the_blank_logprobs_from_the_inputs():
    reward = SelfReward(cues=["visual_grounding", "lexical_fidelity"])
    rollout = make_rollout(["q"] * 2, ["<think>a b c</think><answer>c</answer>"] * 2, group_size=2,
                           logp=torch.tensor([[-1.0] * 4] * 2))
    with pytest.raises(ValueError, match="visual_grounding needs CueInputs.blank_logp"):
        reward(rollout)
    out = reward(rollout, CueInputs(blank_logp=torch.full((2, 4), -2.0)))
    assert out.scores[:, 0].tolist() == pytest.approx([1 / (1 + math.exp(-2))] * 2)  # Δ = 1


def test_reliability_is_all_reduced_when_distributed(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        reward = SelfReward(cues=["semantic_alignment", "lexical_fidelity", "non_redundancy"])
        reward.combine(torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.5, 0.0], [1.0, 1.0, 1.0]]),
                       torch.zeros(3), 3)
        assert reward.reliability_ema.tolist() == pytest.approx(
            [math.sqrt(3) / 2, math.sqrt(3) / 2, 0.5], abs=1e-5)
    finally:
        dist.destroy_process_group()


def test_stats_keys():
    out = SelfReward().combine(torch.rand(4, 6), torch.ones(4), 2)
    kinds = ("reward", "weight", "reliability", "abstain")
    per_cue = {f"{k}/{c}" for k in kinds for c in [*CUE_NAMES, "answer_support"]}
    assert set(out.stats) == {"reward", "reward_raw", "format_rate"} | per_cue


GATE = [  # rewards of ONE group, well_formed, expected, reason
    ([0.3, 0.9, -0.2], [1, 0, 1], [0.3, -1.2, -0.2],
     "an unanswered completion with the best cues ends 1 below the worst answered one"),
    ([0.3, -2.0, -0.2], [1, 0, 1], [0.3, -2.0, -0.2], "already far below: kept"),
    ([0.5, 0.7, 0.1], [0, 0, 0], [0.5, 0.7, 0.1], "nobody answered: unchanged"),
    ([0.5, 0.7, 0.1], [1, 1, 1], [0.5, 0.7, 0.1], "everybody answered: unchanged"),
]


@pytest.mark.parametrize(("rewards", "well_formed", "expected", "reason"), GATE,
                         ids=[g[3] for g in GATE])
def test_gate_unanswered(rewards, well_formed, expected, reason):
    got = gate_unanswered(torch.tensor(rewards), torch.tensor(well_formed), 3)
    assert got.tolist() == pytest.approx(expected)


ANSWERED = ("<think>Step 1: I see two red circles and a blue square.\nStep 2: So there are two "
            "red circles.</think><answer>{}</answer>")
LOOPHOLES = [  # (the answered completion, its loophole twin, why the twin must not win)
    (ANSWERED.format("2"), ANSWERED.format(""), "an EMPTY answer is no answer"),
    (ANSWERED.format("2"), ANSWERED.split("<answer>")[0], "the answer block deleted"),
    (ANSWERED.format("no"), ANSWERED.split("</think>")[0], "cut off before </think>"),
    (ANSWERED.format("7"), ANSWERED.format("2").replace("<think>", "").replace("</think>", ""),
     "no think block: not well-formed"),
    ("<think>Step 1: I guess.</think><answer>5</answer>",
     "<think>Step 1: How many red circles are there? I count red circles.\nStep 2: The red "
     "circles are there.</think>", "better cue scores but no answer: the gate, not a bonus"),
]


@pytest.mark.parametrize("recipe", [dict(),
                                    dict(cues=[*CUE_NAMES[:3], CUE_NAMES[4], "answer_agreement"],
                                         anchor="answer_agreement")])
@pytest.mark.parametrize(("answered", "twin", "reason"), LOOPHOLES, ids=[x[2] for x in LOOPHOLES])
def test_no_completion_without_a_usable_answer_outscores_an_answered_one(recipe, answered, twin,
                                                                         reason):
    recipe = {"cues": TEXT_CUES, **recipe}
    reward = SelfReward(**recipe)
    reward.encoder = HashingEncoder()
    q = "How many red circles are there?"
    other = ANSWERED.format("3").replace("two red", "three red")
    out = reward(make_rollout([q] * 4, [answered, twin, other, twin], group_size=4))
    assert out.rewards[1] < min(out.rewards[0], out.rewards[2]), out.rewards


def test_the_gate_holds_whatever_the_cue_scores():
    # The best cue score on the one completion without an answer: it still ends below the rest
    # (an additive bonus for being well-formed could be outweighed by the z-scores).
    scores = torch.tensor([[0.0], [1.0], [0.5], [0.5]])
    gated = SelfReward(cues=["lexical_fidelity"]).combine(scores, torch.tensor([1.0, 0, 1, 1]), 4)
    assert gated.rewards[1] < gated.rewards[[0, 2, 3]].min()


def test_anchor_reliability_is_the_correlation_with_the_anchor():
    # z_A = (-1, 1)·a, anchor z = (-1, 1)·a too: corr 1; cue B opposite: corr -1; anchor itself 1.
    z = torch.tensor([[-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    corr, groups = consensus_correlation(z, 2, anchor=2)
    assert corr.tolist() == pytest.approx([1.0, -1.0, 1.0]) and groups.tolist() == [1, 1, 1]
    reward = SelfReward(cues=["lexical_fidelity", "non_redundancy", "answer_agreement"],
                        anchor="answer_agreement")
    reward.combine(torch.tensor([[0.2, 0.9, 0.0], [0.8, 0.1, 1.0]]), torch.ones(2), 2)
    w = reward.weights()
    assert w[0] == pytest.approx(w[2]) and w[1] == pytest.approx(0.05)  # the floor
    with pytest.raises(ValueError, match="anchor='answer_agreement' is not an enabled cue"):
        SelfReward(cues=["lexical_fidelity"], anchor="answer_agreement")
    # "auto": answer_support anchors when enabled (the default recipe), else the consensus.
    assert SelfReward().anchor == SelfReward().names.index("answer_support") == 5
    assert SelfReward(cues=["lexical_fidelity", "non_redundancy"]).anchor is None


@pytest.mark.filterwarnings("ignore:.*before the ``update`` method")  # the NaN means, on purpose
def test_each_column_is_scored_once_per_step_and_the_means_take_those_scores(monkeypatch):
    reward = SelfReward(cues=["answer_agreement", "lexical_fidelity"])
    calls = []
    for cue in reward.cues.values():
        monkeypatch.setattr(cue, "score", lambda rollout, inner=cue.score: calls.append(1)
                            or inner(rollout))
    texts = [f"<think>Step 1: I count.</think><answer>{a}</answer>" for a in ("2", "2", "3")]
    rollout = make_rollout(["q"] * 4, [*texts, "<think>none</think>"], group_size=2)
    out = reward(rollout)
    assert len(calls) == 2  # one call per cue
    assert math.isnan(reward.means()["answer_agreement"])  # forward leaves the means alone
    reward.update_means(out.scores)
    reward.update_means(torch.tensor([[0.0, NAN]]))
    # answer agreement: (1, 1) in group 1; "3" agrees with itself, the missing answer 0.
    assert reward.means()["answer_agreement"].item() == pytest.approx(3 / 5)
    assert reward.means()["lexical_fidelity"].item() == pytest.approx(out.scores[:, 1].mean())
    reward.reset_means()
    assert all(math.isnan(v) for v in reward.means().values())
