"""TextEncoder: unit float32 rows, one batched model call per step, empty texts never encoded,
batches cut by padded tokens."""

import itertools
import random

import pytest
import torch

from srmcr import encoder as encoder_module
from srmcr.encoder import TextEncoder, token_batches


def test_prime_encodes_distinct_texts_once_then_embed_hits_cache(fake):
    with fake.step(["a b", "c", "a b", "", "  "]):
        assert fake.calls == [["a b", "c"]]  # deduplicated, blanks left out
        emb = fake.embed(["c", "a b", "c"])
        assert fake.calls == [["a b", "c"]]  # all hits
        fake.embed(["d", "d"])
        assert fake.calls[-1] == ["d"]  # a miss is encoded once and cached for the step
        fake.embed(["d"])
        assert len(fake.calls) == 2
    assert torch.equal(emb[0], emb[2])
    fake.embed(["c"])  # the step closed: its cache is gone
    assert fake.calls[-1] == ["c"]


def test_nothing_is_kept_outside_a_step(fake):
    fake.embed(["x"])
    fake.embed(["x"])
    assert fake.calls == [["x"], ["x"]]


def test_nested_step_keeps_the_outer_cache(fake):
    with fake.step(["x"]):
        with fake.step(["y"]):
            pass
        fake.embed(["x", "y"])
    assert fake.calls == [["x"], ["y"]]


def test_empty_texts_get_zero_vectors_without_the_model(fake):
    emb = fake.embed(["", "a", " "])
    assert fake.calls == [["a"]]
    assert emb[0].abs().sum() == 0 and emb[2].abs().sum() == 0
    assert fake.embed([]).shape[0] == 0


def test_minilm_rows_are_unit_float32_and_the_model_is_loaded_once(minilm):
    emb = minilm.embed(["A red circle.", "Ein roter Kreis 🔴", "A red circle."])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    TextEncoder().embed(["another encoder, same weights"])
    assert sum(key[1] == "cpu" for key in encoder_module._MODELS) == 1


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoder(batch_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        TextEncoder(max_batch_tokens=0)
    with pytest.raises(ValueError, match="batch_cost_tokens"):
        TextEncoder(batch_cost_tokens=-1)


@pytest.mark.parametrize(("lengths", "rows", "tokens", "cost", "expected"), [
    ([3, 10, 5, 10, 1], 64, 20, 100, [[1, 3], [2, 0, 4]]),  # 2 x 10 fits 20, 3 x 10 does not
    ([3, 10, 5, 10, 1], 64, 20, 0, [[1, 3], [2], [0], [4]]),  # free passes: no padding at all
    ([3, 10, 5, 10, 2], 2, 100, 100, [[1, 3], [2], [0, 4]]),  # the row cap; 5+6 < 10+2
    ([30, 4, 4], 64, 8, 0, [[0], [1, 2]]),  # longer than the budget: alone
    ([7, 7, 7], 64, 21, 0, [[0, 1, 2]]),  # ties keep their order; exactly the budget fits
    ([40, 38, 10, 9], 64, 512, 32, [[0, 1], [2, 3]]),  # cut where the lengths drop: 164 < 192
    ([40, 38, 10, 9], 64, 512, 200, [[0, 1, 2, 3]]),  # a pass dearer than the padding it saves
    ([], 64, 512, 32, []),
])
def test_token_batches_by_hand(lengths, rows, tokens, cost, expected):
    assert token_batches(lengths, rows, tokens, cost) == expected


def _split_cost(lengths, batches, cost):
    return sum(len(b) * max(lengths[i] for i in b) + cost for b in batches)


@pytest.mark.parametrize("seed", range(20))
def test_token_batches_find_the_cheapest_split(seed):
    # Against every split of the longest-first order into consecutive batches (brute force).
    rng = random.Random(seed)
    lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 9))]
    rows, tokens, cost = rng.randint(1, 5), rng.randint(20, 120), rng.choice([0, 8, 32, 500])
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = None
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        batches, current = [], [order[0]]
        for cut, i in zip(cuts, order[1:]):
            if cut:
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
        if all(len(b) <= rows and (len(b) == 1 or len(b) * lengths[b[0]] <= tokens)
               for b in batches):
            c = _split_cost(lengths, batches, cost)
            best = c if best is None else min(best, c)
    got = token_batches(lengths, rows, tokens, cost)
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    assert all(len(b) <= rows and (len(b) == 1 or len(b) * lengths[b[0]] <= tokens) for b in got)
    assert _split_cost(lengths, got, cost) == best


def test_minilm_rows_come_back_in_the_texts_order_whatever_the_batches(minilm):
    texts = ["A red circle.", "Step 1: I count every blue square in the left half of the "
             "picture, then the ones on the right.", "yes", "Two green triangles overlap.",
             "Step 2: there are three."]
    small = TextEncoder(max_batch_tokens=16)  # several batches, longest text first
    alone = torch.cat([minilm._encode([t]) for t in texts])
    torch.testing.assert_close(small.embed(texts), alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(minilm.embed(texts), alone, atol=1e-5, rtol=0)
