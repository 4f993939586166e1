"""TextEncoder: unit float32 rows, one batched model call per step, empty texts never encoded."""

import pytest
import torch

from srmcr import encoder as encoder_module
from srmcr.encoder import TextEncoder


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
