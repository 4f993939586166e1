"""Decoding attention that reads each prompt's keys and values once per group: equal to SDPA over
the cache repeated per row, to float rounding, with padding, grouped-query heads and cut groups."""

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv

from srmcr.group_attention import GroupCacheLayer, group_attention, group_slots

# (counts, width, slots, reason)
SLOT_CASES = [
    ([2, 2], 2, None, "full groups: the rows are the slots"),
    ([3, 1], 3, [0, 1, 2, 3], "the last group cut: its row takes the first slot"),
    ([1, 3], 3, [0, 3, 4, 5], "the first group cut"),
    ([2, 3, 1], 3, [0, 1, 3, 4, 5, 6], "cut at both ends"),
]


@pytest.mark.parametrize(("counts", "width", "slots", "reason"), SLOT_CASES,
                         ids=[c[3] for c in SLOT_CASES])
def test_group_slots(counts, width, slots, reason):
    got = group_slots(torch.tensor(counts), width)
    assert (got is None and slots is None) or got.tolist() == slots


def _case(counts: list[int], queries: int, padded: bool, dtype: torch.dtype, seed: int = 0):
    """Random prompt keys (B, h=2, S, D) once per group, each row's own keys (T of them), queries
    of 4 heads (2 per key head), and the mask transformers builds: left padding on the first
    prompt, causal among the row's last ``queries`` positions."""
    gen = torch.Generator().manual_seed(seed)
    B, h, H, S, T, D = len(counts), 2, 4, 11, 6, 8
    N = sum(counts)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype)  # noqa: E731
    prompt_k, prompt_v, own_k, own_v = rand(B, h, S, D), rand(B, h, S, D), rand(N, h, T, D), \
        rand(N, h, T, D)
    query = rand(N, H, queries, D)
    prompt_of = torch.repeat_interleave(torch.arange(B), torch.tensor(counts))
    visible = torch.ones(N, S + T, dtype=torch.bool)
    if padded:
        visible[prompt_of == 0, :4] = False
    causal = torch.ones(queries, S + T, dtype=torch.bool).tril(S + T - queries)
    mask = (visible[:, None, None, :] & causal) if padded or queries > 1 else None
    return query, prompt_k, prompt_v, own_k, own_v, prompt_of, mask


def _repeated_sdpa(query, prompt_k, prompt_v, own_k, own_v, prompt_of, mask):
    """What the model computes without grouping: SDPA over each row's whole cache."""
    keys = torch.cat([prompt_k[prompt_of], own_k], dim=2)
    values = torch.cat([prompt_v[prompt_of], own_v], dim=2)
    rep = query.shape[1] // keys.shape[1]
    out = F.scaled_dot_product_attention(query, repeat_kv(keys, rep), repeat_kv(values, rep),
                                         attn_mask=mask, scale=0.3)
    return out.transpose(1, 2)  # (N, q, H, D), as transformers' sdpa_attention_forward


def _grouped(query, prompt_k, prompt_v, own_k, own_v, prompt_of, mask, dtype=None):
    """``group_attention`` on the own keys laid out in slots (W per group), as the cache keeps
    them; ``dtype``: the dtype the cache computes in."""
    counts = torch.bincount(prompt_of)
    width = int(counts.max())
    slots = group_slots(counts, width)
    dtype = dtype or prompt_k.dtype
    own = [x.to(dtype) if slots is None else
           x.new_zeros(len(counts) * width, *x.shape[1:], dtype=dtype).index_copy_(
               0, slots, x.to(dtype)) for x in (own_k, own_v)]
    return group_attention(query, prompt_k.to(dtype), prompt_v.to(dtype), *own, mask, 0.3, slots)


SHAPES = [([3, 3], 1, True), ([3, 3], 1, False), ([3, 1], 1, True), ([1, 3, 2], 1, True),
          ([2, 2], 3, True), ([3, 1], 3, False)]
SHAPE_IDS = ["full-groups-padded", "full-groups-no-mask", "cut-group", "cut-both-ends",
             "3-queries-causal", "cut-3-queries"]


@pytest.mark.parametrize(("counts", "queries", "padded"), SHAPES, ids=SHAPE_IDS)
def test_group_attention_equals_sdpa_over_the_repeated_cache(counts, queries, padded):
    case = _case(counts, queries, padded, torch.float32)
    want = _repeated_sdpa(*case)
    got = _grouped(*case)
    assert got.shape == want.shape == (sum(counts), queries, 4, 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The data would show a merge that loses or doubles a part: both parts weigh in every row.
    query, prompt_k, prompt_v, own_k, own_v, prompt_of, mask = case
    for part in (prompt_v, own_v):
        part_changed = _repeated_sdpa(query, prompt_k, prompt_v + (part is prompt_v),
                                      own_k, own_v + (part is own_v), prompt_of, mask)
        assert (part_changed - want).abs().amax(dim=(1, 2, 3)).min() > 0.1


@pytest.mark.parametrize(("counts", "queries", "padded"), SHAPES[:3], ids=SHAPE_IDS[:3])
def test_half_precision_attends_in_float32(counts, queries, padded):
    # bf16 keys and values are kept in float32 by the cache: the grouped attention then equals
    # float32 SDPA on the same bf16 values to bf16 rounding of the output (one unit in the last
    # place), and bf16 SDPA itself to bf16 rounding.
    case = _case(counts, queries, padded, torch.bfloat16)
    got = _grouped(*case, dtype=torch.float32)
    assert got.dtype == torch.bfloat16
    exact = _repeated_sdpa(*(x.float() if x.is_floating_point() else x for x in case[:-1]),
                           case[-1]).to(torch.bfloat16)
    torch.testing.assert_close(got, exact, atol=0, rtol=2**-7)
    torch.testing.assert_close(got, _repeated_sdpa(*case), atol=0.05, rtol=0.02)


def test_group_attention_needs_a_mask_for_several_queries():
    case = _case([2, 2], 2, False, torch.float32)[:-1]
    with pytest.raises(ValueError, match="causal mask"):
        _grouped(*case, None)


@pytest.mark.parametrize("counts", [[2, 2], [2, 1]], ids=["full-groups", "cut-group"])
def test_group_cache_layer_keeps_the_prompt_once_and_each_rows_own_keys(counts):
    # Written step by step (one position, then several, past the reservation: it grows), the
    # rows' parts equal what a per-row growing cache holds after the prompt.
    torch.manual_seed(0)
    counts_t = torch.tensor(counts)
    prompt_k, prompt_v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    layer = GroupCacheLayer(prompt_k, prompt_v, counts_t, capacity=3)
    rows = DynamicLayer()
    slots = group_slots(counts_t, 2)
    for step, length in enumerate([1, 1, 2, 1]):  # 5 positions > 3 reserved
        assert layer.get_seq_length() == 5 + sum([1, 1, 2, 1][:step])
        assert layer.get_mask_sizes(length) == (layer.get_seq_length() + length, 0)
        new = torch.randn(sum(counts), 2, length, 4), torch.randn(sum(counts), 2, length, 4)
        keys, values = layer.update(*new)
        whole = rows.update(*new)
        for got, want in zip((keys, values), whole):
            got = got if slots is None else got.index_select(0, slots)
            assert torch.equal(got, want)
    assert layer.prompt_keys is prompt_k and layer.prompt_keys.shape[0] == 2  # once per group
    assert layer._keys.shape[-2] >= 5
    with pytest.raises(NotImplementedError):
        layer.batch_select_indices(torch.tensor([0]))
    with pytest.raises(NotImplementedError):
        layer.crop(-1)


def test_group_cache_layer_keeps_half_precision_in_float32():
    keys = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16)
    layer = GroupCacheLayer(keys, keys, torch.tensor([2]), capacity=2)
    assert layer.prompt_keys.dtype == torch.float32 and torch.equal(layer.prompt_keys,
                                                                     keys.float())
    own, _ = layer.update(torch.ones(2, 2, 1, 4, dtype=torch.bfloat16),
                          torch.ones(2, 2, 1, 4, dtype=torch.bfloat16))
    assert own.dtype == torch.float32 and layer.dtype == torch.bfloat16
