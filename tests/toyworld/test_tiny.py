"""The tiny Qwen2.5-VL builder: deterministic, small, and wired like the real model."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import Qwen2_5_VLConfig, Qwen2Tokenizer
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

from srmcr import prompts
from toyworld import tiny
from toyworld.tiny import SPECIAL_TOKENS, ImageOnlyQwenProcessor

FORMAT_TEXT = ("<think>Step 1: I see two red circles.\nStep 2: I see one blue circle.</think>"
               "<answer>3</answer>")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return tiny.build("tiny", tmp_path_factory.mktemp("tiny"))


def test_same_seed_same_files_other_seed_other_weights(tmp_path, built):
    again = tiny.build("tiny", tmp_path / "again", seed=0)
    other = tiny.build("tiny", tmp_path / "other", seed=1)
    names = sorted(f.name for f in built.iterdir())
    assert names == sorted(f.name for f in again.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json",
            "processor_config.json"} <= set(names)
    for name in names:  # tokenizer, processor, config: byte for byte
        if name != "model.safetensors":
            assert (built / name).read_bytes() == (again / name).read_bytes(), name
    a, b, c = (load_file(p / "model.safetensors") for p in (built, again, other))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    matrices = [k for k in a if a[k].dim() >= 2]  # biases start at 0 and norms at 1 for any seed
    assert len(matrices) > 20
    assert not any(torch.equal(a[k], c[k]) for k in matrices)  # another seed: other weights


def test_tiny_is_under_one_megabyte(built):
    assert sum(f.stat().st_size for f in built.iterdir()) < 1_000_000


def test_tokenizer_round_trips_format_text(built):
    tok = Qwen2Tokenizer.from_pretrained(built)
    for text in (FORMAT_TEXT, "  Step 12: ünïcødé ✓ 三つ\n\n<answer> 42 </answer>"):
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok(FORMAT_TEXT)["input_ids"]) < len(FORMAT_TEXT) // 2  # merges were learned


def test_special_tokens_match_config(built):
    tok = Qwen2Tokenizer.from_pretrained(built)
    config = Qwen2_5_VLConfig.from_pretrained(built)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(SPECIAL_TOKENS)
    for token, i in ids.items():  # each special token is one id, both ways
        assert tok(token)["input_ids"] == [i], token
        assert tok.convert_ids_to_tokens(i) == token
    assert config.image_token_id == ids["<|image_pad|>"]
    assert config.video_token_id == ids["<|video_pad|>"]
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    assert config.text_config.eos_token_id == tok.eos_token_id == ids["<|im_end|>"]
    assert config.text_config.pad_token_id == tok.pad_token_id == ids["<|endoftext|>"]
    generation = json.loads((built / "generation_config.json").read_text())
    assert generation["eos_token_id"] == ids["<|im_end|>"]
    assert generation["pad_token_id"] == ids["<|endoftext|>"]
    vocab = config.text_config.vocab_size
    assert vocab % 64 == 0 and len(tok) <= vocab < len(tok) + 64
    assert config.text_config.hidden_size == config.vision_config.out_hidden_size == 64


def test_processor_has_image_processor_and_counts_image_tokens(built):
    processor = ImageOnlyQwenProcessor.from_pretrained(built)
    assert isinstance(processor, ImageOnlyQwenProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    assert isinstance(processor.tokenizer, Qwen2Tokenizer)
    text = prompts.render(processor, ["How many circles?"])
    assert text[0].count("<|image_pad|>") == 1 and text[0].endswith("<|im_start|>assistant\n")
    enc = processor(text=text, images=[Image.new("RGB", (112, 112), (9, 9, 9))],
                    return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 112/14 = 8 patches a side, 2x2 merge -> 16 tokens; each patch row is 3*2*14*14 = 1176 values.
    assert (enc["input_ids"] == image_id).sum() == 16
    assert enc["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert enc["pixel_values"].shape == (64, 1176)
    assert torch.equal(enc["mm_token_type_ids"], (enc["input_ids"] == image_id).long())


def test_main_writes_a_loadable_folder(tmp_path, capsys):
    tiny.main(["--size", "tiny", "--out", str(tmp_path / "m")])
    assert "wrote tiny Qwen2.5-VL (tiny)" in capsys.readouterr().out
    assert Qwen2_5_VLConfig.from_pretrained(tmp_path / "m").text_config.num_hidden_layers == 2
    assert ImageOnlyQwenProcessor.from_pretrained(tmp_path / "m").image_processor is not None


def test_unknown_size_names_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown tiny size 'huge'.*\['small', 'tiny'\]"):
        tiny.build("huge", tmp_path / "b")
    with pytest.raises(ValueError, match=r"\['small', 'tiny'\]"):
        tiny.cached("huge", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # the failed build left no temp folder
    with pytest.raises(SystemExit):
        tiny.main(["--size", "huge", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert "invalid choice: 'huge'" in err and "small" in err and "tiny" in err


def test_cached_builds_once(tmp_path, monkeypatch):
    first = tiny.cached("tiny", tmp_path)
    assert first.parent == tmp_path and (first / "config.json").exists()
    mtime = (first / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cached() rebuilt an existing folder")

    monkeypatch.setattr(tiny, "build", no_rebuild)
    assert tiny.cached("tiny", tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert list(tmp_path.iterdir()) == [first]  # no temp folder left behind
