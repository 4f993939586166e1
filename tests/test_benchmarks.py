"""The side-by-side benchmark's parity claims, checked without TRL (benchmarks/vs_trl.py)."""

from itertools import islice

import pytest

from benchmarks.reward_cost import make_rollout
from benchmarks.scaling import FIXED_G, FIXED_TOKENS, points
from benchmarks.vs_trl import REWARDS, Setup, shapes_examples, srmcr_overrides, trl_reward
from datamodules.image_question import ImageQuestionDataModule
from srmcr.reward import SelfReward


def test_trl_reward_wrapper_returns_srmcrs_own_reward():
    questions = ["How many red circles are there?"] * 2 + ["Is there a blue square?"] * 2
    texts = ["<think>Step 1: I count the red circles.\nStep 2: There are two red circles."
             "</think><answer>2</answer>", "red red red", "<think>Step 1: a blue square is at "
             "the top.</think><answer>yes</answer>", "<answer>no</answer>"]
    wrapped = trl_reward(REWARDS["trivial"], group_size=2)
    got = wrapped(prompts=[None] * 4, completions=[[{"role": "assistant", "content": t}]
                                                   for t in texts], question=questions)
    expected = SelfReward(cues=list(REWARDS["trivial"]))(make_rollout(questions, texts, 2))
    assert got == pytest.approx(expected.rewards.tolist())


def test_trl_side_streams_the_same_prompts_as_the_datamodule():
    s = Setup()
    data = ImageQuestionDataModule(train="shapes:train", batch_size=s.prompts,
                                   max_pixels=s.max_pixels, min_pixels=s.min_pixels, seed=s.seed)
    data.setup("fit")
    batches = list(islice(iter(data.train_dataloader()), 2))
    examples = shapes_examples(s, 2 * s.prompts)
    assert [q for b in batches for q in b.questions] == [e.question for e in examples]
    first = batches[0].images[0]
    assert first.size == examples[0].image.size and first.tobytes() == examples[0].image.tobytes()


def test_srmcr_overrides_pin_the_shared_settings():
    from benchmarks.step_time import build

    s = Setup()
    module, data = build("configs/tiny.yaml", srmcr_overrides(s, REWARDS["text"]))
    assert (module.sampling.group_size, module.sampling.max_new_tokens, data.batch_size) == \
        (s.group_size, s.max_new_tokens, s.prompts)
    assert (module.policy_args.lora.r, module.policy_args.lora.alpha) == (s.lora_r, s.lora_alpha)
    assert module.grpo_args.beta == s.beta and module.grpo_args.aggregation == "grpo"
    assert list(module.reward.names) == list(REWARDS["text"])
    assert not module.reward.needs_blank_logprobs  # TRL's rewards cannot see log-probs


def test_scaling_points_cover_both_sweeps_once():
    pairs = points()
    assert len(pairs) == len(set(pairs))
    assert {g for g, t in pairs if t == FIXED_TOKENS} == {2, 4, 8, 16}
    assert {t for g, t in pairs if g == FIXED_G} == {32, 64, 128}
