"""Sampling G completions per prompt: masks, image rows, group layout, suppressed tokens."""

from dataclasses import FrozenInstanceError, replace

import pytest
import torch
from transformers.generation.logits_process import SuppressTokensLogitsProcessor

from srmcr import group_attention
from srmcr.errors import ConfigError
from srmcr.parsing import parse
from srmcr.prefix import language_core
from srmcr.rollout import (
    SamplingArgs,
    SuppressTokens,
    completion_mask,
    sample,
    select_images,
)
from tests.fixtures import (
    GRIDS,
    IMAGE_TOKENS,
    QUESTIONS,
    needs_bnb_4bit,
    randomize_lora,
    sample_with_logits,
    tiny_policy,
    two_images,
)

END = (2, 0)  # <|im_end|>, <|endoftext|> in the tiny tokenizer (the sampler's end tokens)


# (ids, mask, truncated, reason)
MASK_CASES = [
    ([5, 6, 2, 7, 8], [1, 1, 1, 0, 0], False, "end in the middle: kept, the rest masked"),
    ([2, 5, 6, 7, 8], [1, 0, 0, 0, 0], False, "end at position 0"),
    ([5, 6, 7, 8, 9], [1, 1, 1, 1, 1], True, "no end: truncated, all kept"),
    ([5, 6, 7, 8, 2], [1, 1, 1, 1, 1], False, "end on the last token: not truncated"),
    ([5, 2, 0, 0, 0], [1, 1, 0, 0, 0], False, "pad (an end id) after the end"),
    ([5, 0, 6, 2, 7], [1, 1, 0, 0, 0], False, "several end tokens: the first one ends"),
]


@pytest.mark.parametrize(("ids", "mask", "truncated", "reason"), MASK_CASES,
                         ids=[c[3] for c in MASK_CASES])
def test_completion_mask_row(ids, mask, truncated, reason):
    got_mask, got_truncated = completion_mask(torch.tensor([ids]), END)
    assert got_mask.tolist() == [mask]
    assert got_truncated.tolist() == [truncated]


def test_completion_mask_batch():
    mask, truncated = completion_mask(torch.tensor([c[0] for c in MASK_CASES]), END)
    assert mask.dtype == torch.long and truncated.dtype == torch.bool
    assert mask.tolist() == [c[1] for c in MASK_CASES]
    assert truncated.tolist() == [c[2] for c in MASK_CASES]


def test_select_images_picks_rows_in_order():
    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 2, 3]])  # 4, 8 and 6 patch rows
    pixels = torch.arange(18.0).unsqueeze(1).expand(18, 5)  # row i holds the value i
    rows, g = select_images(pixels, grid, torch.tensor([2, 0, 2, 1]))
    expected = [12, 13, 14, 15, 16, 17, 0, 1, 2, 3, 12, 13, 14, 15, 16, 17,
                4, 5, 6, 7, 8, 9, 10, 11]
    assert rows[:, 0].tolist() == expected and rows.shape == (24, 5)
    assert g.tolist() == [[1, 2, 3], [1, 2, 2], [1, 2, 3], [1, 2, 4]]


# ---------------------------------------------------------------- sampling the tiny model


@pytest.fixture(scope="module")
def policy():
    return tiny_policy()


@pytest.fixture(scope="module")
def hot_rollout(policy):
    """B=2 prompts (different image sizes), G=3, chunks of 4 (4 + 2), near-uniform sampling."""
    model, processor = policy
    args = SamplingArgs(group_size=3, max_new_tokens=64, generation_batch_size=4)
    torch.manual_seed(0)
    return sample(model, processor, two_images(), QUESTIONS, args, temperature=50.0,
                  ids=["a", "b"])


def test_shapes_and_contiguous_groups(hot_rollout, policy):
    r, (_, processor) = hot_rollout, policy
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert len(r) == 6 and r.group_size == 3 and r.num_groups == 2
    assert r.questions == [QUESTIONS[0]] * 3 + [QUESTIONS[1]] * 3
    assert r.ids == ["a", "a", "a", "b", "b", "b"]
    n, p = r.prompt_ids.shape
    assert n == 6 and r.prompt_mask.shape == r.mm_token_type_ids.shape == (6, p)
    assert r.completion_ids.shape == r.completion_mask.shape and r.completion_ids.shape[0] == 6
    assert r.completion_ids.shape[1] <= 64 and r.truncated.shape == (6,)
    assert r.well_formed.shape == (6,) and len(r.texts) == len(r.parsed) == 6
    # Rows of one group share their prompt; the two groups differ (other image size).
    for g in range(2):
        assert all(torch.equal(r.prompt_ids[3 * g], r.prompt_ids[3 * g + k]) for k in (1, 2))
    assert not torch.equal(r.prompt_ids[0], r.prompt_ids[3])
    image_tokens = (r.prompt_ids == image_id).sum(1).tolist()
    assert image_tokens == [IMAGE_TOKENS[0]] * 3 + [IMAGE_TOKENS[1]] * 3
    assert torch.equal(r.mm_token_type_ids, (r.prompt_ids == image_id).long())
    # Left padding: the shorter prompt (smaller image) is padded on the left only.
    assert r.prompt_mask[3:].all()
    pad = p - int(r.prompt_mask[0].sum())
    assert pad >= 8  # at least 24 - 16 image tokens, plus the question's length difference
    assert r.prompt_mask[0].tolist() == [0] * pad + [1] * (p - pad)
    assert (r.prompt_ids[0, :pad] == 0).all()  # padded with <|endoftext|>
    assert r.image_grid_thw.tolist() == GRIDS
    assert r.pixel_values.shape == (64 + 96, 1176) and r.temperature == 50.0
    assert [im.size for im in r.images] == [(112, 112), (168, 112)]


@pytest.mark.parametrize("how", ["grouped-chunks", "whole-rows", "greedy"])
def test_rollout_positions_are_the_models_own(policy, how):
    # The sampler numbers the whole sequences' mrope positions once (from the prompts' own
    # get_rope_index), for every later pass: exactly what the model computes over them, left
    # padding and the masked tails of completions that ended early included.
    model, processor = policy
    args = SamplingArgs(group_size=3, max_new_tokens=24, generation_batch_size=4)
    greedy = how == "greedy"
    r, _ = sample_with_logits(model, processor, args, 1.5, end_bonus=0.0 if greedy else 3.0,
                              greedy=greedy, share_prompt=how != "whole-rows")
    assert greedy or not r.completion_mask.all()
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    want, _ = language_core(model).get_rope_index(
        ids, mm_token_type_ids=torch.cat([r.mm_token_type_ids,
                                          torch.zeros_like(r.completion_ids)], 1),
        attention_mask=torch.cat([r.prompt_mask, r.completion_mask], 1),
        image_grid_thw=r.image_grid_thw[torch.arange(len(r)) // r.group_size])
    assert torch.equal(r.position_ids, want)


def test_a_sampled_rollout_is_immutable(hot_rollout):
    # What the reward needs beyond the completions comes as explicit inputs, never as fields
    # set on the rollout after sampling.
    with pytest.raises(FrozenInstanceError):
        hot_rollout.texts = []
    changed = replace(hot_rollout, temperature=1.0)
    assert changed.temperature == 1.0 and hot_rollout.temperature == 50.0


def test_masks_agree_with_end_tokens_and_truncation(hot_rollout):
    r = hot_rollout
    for ids, mask, truncated in zip(r.completion_ids, r.completion_mask, r.truncated):
        ends = ((ids == END[0]) | (ids == END[1])).nonzero().flatten().tolist()
        length = int(mask.sum())
        assert mask.tolist() == [1] * length + [0] * (len(mask) - length)  # a prefix
        if truncated:
            assert not ends and length == len(mask) == 64
        else:
            assert ends and length == ends[0] + 1  # up to and including the first end
            assert set(ids[length:].tolist()) <= {0}  # generate pads with <|endoftext|>


def test_no_special_token_is_ever_sampled_but_the_end(hot_rollout, policy):
    r, (_, processor) = hot_rollout, policy
    tok = processor.tokenizer
    sampled = r.completion_ids[r.completion_mask.bool()]
    # At T=50 sampling is near-uniform over 640 ids: over this many tokens, the 12 suppressed
    # specials would show up ~(12/640)*len times if suppression were off.
    assert len(sampled) >= 250 and len(set(sampled.tolist())) > 150
    forbidden = set(tok.all_special_ids) - set(END)
    assert {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>",
                                                  "<|vision_end|>", "<|video_pad|>")} <= forbidden
    assert not forbidden & set(sampled.tolist())


def test_texts_decode_without_special_tokens_and_parse(hot_rollout, policy):
    r, (_, processor) = hot_rollout, policy
    for text, parsed, ids, mask in zip(r.texts, r.parsed, r.completion_ids, r.completion_mask):
        assert text == processor.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
        assert "<|im_end|>" not in text and "<|endoftext|>" not in text
        assert parsed == parse(text)


def test_sampling_is_reproducible_with_a_seed(policy):
    model, processor = policy
    args = SamplingArgs(group_size=2, max_new_tokens=16)

    def run(seed):
        torch.manual_seed(seed)
        return sample(model, processor, two_images(), QUESTIONS, args, temperature=2.0)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)


PRECISIONS = {"fp32": {}, "bf16": {"dtype": "bfloat16"},
              "4bit": {"quantization": "4bit"}}
# Logit tolerance against the row-by-row path: float32 rounding; a few units in the last place
# of bf16 logits of about 0.6 (the grouped attention runs in float32, bf16 SDPA rounds inside);
# nf4 weights compute in float32.
TOLERANCE = {"fp32": 1e-5, "bf16": 0.02, "4bit": 1e-5}


@pytest.mark.parametrize(
    ("precision", "chunk"),
    [("fp32", 64), ("fp32", 4), ("bf16", 64), pytest.param("4bit", 4, marks=needs_bnb_4bit)],
    ids=["fp32-one-call", "fp32-chunks-cut-groups", "bf16", "4bit-chunks-cut-groups"])
def test_grouped_decoding_samples_what_row_by_row_decoding_does(precision, chunk, monkeypatch):
    # Each prompt prefilled once and its keys and values read once per group at every token
    # (group_attention), against each row prefilled and decoded whole: the same logits to float
    # rounding at every step, hence the same tokens for the same seed. The prompts have two
    # lengths (left padding), the heads are grouped (4 query heads on 2 key heads), mrope
    # positions after the image must continue as in a full prefill, and with chunks of 4 rows
    # for G = 3 the first chunk cuts the second group (3 + 1 rows), the second holds 2 of its
    # rows.
    model, processor = tiny_policy(**PRECISIONS[precision])
    randomize_lora(model)
    args = SamplingArgs(group_size=3, max_new_tokens=16, generation_batch_size=chunk)
    grouped_calls = []
    inner = group_attention.group_attention
    monkeypatch.setattr(group_attention, "group_attention",
                        lambda *a, **k: grouped_calls.append(a[3].shape) or inner(*a, **k))
    shared, shared_logits = sample_with_logits(model, processor, args, 2.0, seed=3)
    assert grouped_calls and {s[0] for s in grouped_calls} == ({6} if chunk == 64 else {6, 2})
    grouped_calls.clear()
    whole, whole_logits = sample_with_logits(model, processor, args, 2.0, seed=3,
                                             share_prompt=False)
    assert not grouped_calls
    assert shared.prompt_mask.sum(1).unique().numel() == 2
    assert torch.equal(shared.completion_ids, whole.completion_ids)
    mask = whole.completion_mask.bool()
    torch.testing.assert_close(shared_logits[mask], whole_logits[mask],
                               atol=TOLERANCE[precision], rtol=0)
    atol = TOLERANCE[precision]
    torch.testing.assert_close(shared.logp[mask], whole.logp[mask], atol=atol, rtol=0)
    torch.testing.assert_close(shared.max_prob[mask], whole.max_prob[mask], atol=atol, rtol=0)
    # The model's own attention is back for every other pass.
    text = language_core(model).language_model
    assert text.config._attn_implementation == "sdpa"
    assert not any(hasattr(layer.self_attn, "group_cache") for layer in text.layers)


@pytest.mark.parametrize("training", [True, False])
def test_sampling_runs_in_eval_and_restores_the_mode(policy, training):
    model, processor = policy
    seen = []
    hook = model.get_base_model().register_forward_pre_hook(lambda m, _: seen.append(m.training))
    model.train(training)
    try:
        sample(model, processor, two_images()[:1], QUESTIONS[:1],
               SamplingArgs(group_size=2, max_new_tokens=3), temperature=1.0)
    finally:
        hook.remove()
        mode = model.training
        model.eval()
    assert seen and not any(seen)  # every generation forward ran in eval mode
    assert mode is training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"group_size": 1}, r"^sampling.group_size=1: set it to 2 or more"),
        ({"group_size": 1025}, r"^sampling.group_size=1025: set it to 1024 or less \(a group's "
                               r"statistics compare every pair of its completions"),
        ({"max_new_tokens": 0}, r"^sampling.max_new_tokens=0: set it to 1 or more$"),
        ({"generation_batch_size": 0}, r"^sampling.generation_batch_size=0: set it to 1 or more$"),
        ({"temperature": 0.0}, r"^sampling.temperature=0.0: set it above 0"),
        ({"temperature": float("inf")}, r"^sampling.temperature=inf: set it above 0"),
        ({"top_p": 0.0}, r"^sampling.top_p=0.0: set it above 0 and at most 1"),
        ({"top_p": 1.5}, r"^sampling.top_p=1.5: set it above 0 and at most 1"),
        ({"top_k": -1}, r"^sampling.top_k=-1: set it to 0 \(off\) or more$"),
        ({"val_group_size": 1}, r"^sampling.val_group_size=1: set it to 0 \(off\), 2 to 1024"),
        ({"val_group_size": 2048}, r"^sampling.val_group_size=2048: set it to 0 \(off\), 2 to"),
        ({"val_sample_batches": -1}, r"^sampling.val_sample_batches=-1: set it to 0 or more"),
    ],
)
def test_sampling_args_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SamplingArgs(**kwargs)


def test_top_k_zero_samples_from_the_whole_vocabulary():
    # At T = 50 the tiny model's next-token distribution is almost uniform over ~600 tokens, so
    # 64 draws give about 60 distinct tokens; transformers' implicit top-k of 50 would cap it at 50.
    model, processor = tiny_policy()
    image = two_images()[0]
    torch.manual_seed(0)
    rollout = sample(model, processor, [image], ["How many circles?"],
                     SamplingArgs(group_size=64, max_new_tokens=1, top_k=0), temperature=50.0)
    assert len(set(rollout.completion_ids[:, 0].tolist())) > 50


def test_suppress_tokens_matches_transformers_processor():
    # The sampler suppresses with a mask built once; transformers' own processor rebuilds it at
    # every token. Same scores bit for bit, or the same seed would draw other tokens.
    torch.manual_seed(0)
    scores = torch.randn(5, 40)
    tokens = [0, 3, 17, 39]
    want = SuppressTokensLogitsProcessor(tokens)(torch.zeros(5, 1, dtype=torch.long), scores)
    got = SuppressTokens(tokens, 40, scores.device)(torch.zeros(5, 1, dtype=torch.long), scores)
    assert torch.equal(got, want)
    assert torch.isinf(got[:, tokens]).all() and torch.isfinite(got[:, [1, 2, 38]]).all()
