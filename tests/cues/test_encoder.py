"""TextEncoder: unit float32 rows, one batched model call per step, empty texts never encoded,
batches cut by padded tokens."""

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


@pytest.mark.parametrize(("lengths", "rows", "tokens", "expected"), [
    ([3, 10, 5, 10, 1], 64, 20, [[1, 3], [2, 0, 4]]),  # 2 x 10 fits 20, 3 x 10 does not
    ([3, 10, 5, 10, 1], 2, 100, [[1, 3], [2, 0], [4]]),  # the row cap
    ([30, 4, 4], 64, 8, [[0], [1, 2]]),  # longer than the budget: alone
    ([7, 7, 7], 64, 21, [[0, 1, 2]]),  # ties keep their order; exactly the budget fits
    ([], 64, 512, []),
])
def test_token_batches_by_hand(lengths, rows, tokens, expected):
    assert token_batches(lengths, rows, tokens) == expected


def test_minilm_rows_come_back_in_the_texts_order_whatever_the_batches(minilm):
    texts = ["A red circle.", "Step 1: I count every blue square in the left half of the "
             "picture, then the ones on the right.", "yes", "Two green triangles overlap.",
             "Step 2: there are three."]
    small = TextEncoder(max_batch_tokens=16)  # several batches, longest text first
    alone = torch.cat([minilm._encode([t]) for t in texts])
    torch.testing.assert_close(small.embed(texts), alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(minilm.embed(texts), alone, atol=1e-5, rtol=0)
