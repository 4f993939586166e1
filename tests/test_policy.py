"""Policy loading: model specs, LoRA placement, processor pixel caps, and the 4-bit (QLoRA) path."""

import re

import pytest
import torch
from PIL import Image

from srmcr.errors import ConfigError
from srmcr.logprobs import completion_logits
from srmcr.policy import LoraArgs, PolicyArgs, resolve_model
from srmcr.rollout import SamplingArgs, sample
from tests.fixtures import QUESTIONS, tiny_policy, two_images
from toyworld import tiny

LORA_PARAM = re.compile(r"base_model\.model\.model\.language_model\.layers\.\d+\."
                        r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
                        r"\.lora_[AB]\.default\.weight")


@pytest.fixture(scope="module")
def policy():
    return tiny_policy()


# ---------------------------------------------------------------- LoRA placement


def test_lora_only_on_language_model_projections(policy):
    model, _ = policy
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 2 layers x 7 projections x (lora_A, lora_B)
    assert len(trainable) == 28
    assert all(LORA_PARAM.fullmatch(n) for n in trainable), trainable
    assert not any("visual" in n for n in trainable)
    # The vision blocks have their own mlp.gate/up/down_proj: none may be adapted.
    assert not any("lora" in n for n, _ in model.get_base_model().model.visual.named_modules())
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert len(base) > 50 and not any(p.requires_grad for p in base)  # base weights frozen


def test_target_modules_narrow_the_adapter():
    model, _ = tiny_policy(lora=LoraArgs(r=2, alpha=4, target_modules=["q_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"base_model.model.model.language_model.layers.{i}.self_attn.q_proj."
                         f"lora_{ab}.default.weight" for i in (0, 1) for ab in "AB"}
    q = model.get_base_model().model.language_model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.shape == (2, 64) and q.scaling["default"] == 2.0  # 4 / 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, r"^policy.lora.r=0: set it to 1 or more"),
        ({"alpha": 0}, r"^policy.lora.alpha=0: set it above 0"),
        ({"dropout": 1.0}, r"^policy.lora.dropout=1.0: set it to at least 0 and below 1$"),
        ({"dropout": -0.1}, r"^policy.lora.dropout=-0.1: set it to at least 0 and below 1$"),
        ({"target_modules": []}, "^policy.lora.target_modules is empty: name at least one of "
                                 "q_proj, k_proj"),
        ({"target_modules": ["q_proj", "qkv"]}, "^policy.lora.target_modules: qkv is no "
                                                "projection of the language model; use q_proj"),
    ],
)
def test_lora_args_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LoraArgs(**kwargs)


def test_policy_args_pixel_bounds_error():
    with pytest.raises(ConfigError, match=r"^policy.max_pixels=784 is below "
                                          r"policy.min_pixels=3136: raise max_pixels"):
        PolicyArgs(min_pixels=3136, max_pixels=784)
    PolicyArgs(min_pixels=784, max_pixels=784)  # equal bounds are fine
    PolicyArgs(max_pixels=784)  # one bound alone is not cross-checked
    for bound in ("min_pixels", "max_pixels"):  # less than one image token
        with pytest.raises(ConfigError, match=rf"^policy.{bound}=783: set it to 784 \(one image"):
            PolicyArgs(**{bound: 783})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"quantization": "2bit"}, r"^policy.quantization='2bit': set it to one of none, 4bit, 8bit$"),
    ({"dtype": "fp8"}, r"^policy.dtype='fp8': set it to one of float32, bfloat16, float16$"),
    ({"attn_implementation": "flash"}, r"^policy.attn_implementation='flash': set it to one of"),
])
def test_policy_args_choices_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PolicyArgs(**kwargs)


# ---------------------------------------------------------------- model specs


def test_resolve_tiny_builds_into_cache_dir(tmp_path):
    path = resolve_model("tiny:tiny", cache_dir=tmp_path)
    assert path == str(tmp_path / f"tiny-tiny-v{tiny.BUILD_VERSION}")
    assert (tmp_path / path / "config.json").exists()
    with pytest.raises(ValueError, match=r"use one of tiny:small, tiny:tiny"):
        resolve_model("tiny:huge", cache_dir=tmp_path)


def test_resolve_existing_folder_and_hub_id(tmp_path, monkeypatch):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    assert resolve_model("./ckpt") == "ckpt"
    # A hub id passes through untouched (no network, no existence check).
    assert resolve_model("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"


@pytest.mark.parametrize("spec", ["./nope", "/nope/x", "nope", "a/b/c", "~/nope-srmcr"])
def test_resolve_missing_path_is_a_helpful_error(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"neither an existing folder nor a hub id "
                                                r"\('org/name'\) nor a registered source \(tiny:<name>, warm:<name>\)") as err:
        resolve_model(spec)
    assert repr(spec) in str(err.value)


# ---------------------------------------------------------------- processor


def _image_tokens(processor, size) -> int:
    grid = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")
    return int(grid["image_grid_thw"].prod()) // 4  # 2x2 patch merge


def test_pixel_caps_reach_the_processor(policy):
    _, default = policy
    assert default.tokenizer.padding_side == "left"
    assert default.image_processor.size == {"shortest_edge": 784, "longest_edge": 224 * 224}
    assert _image_tokens(default, (112, 112)) == 16

    _, capped = tiny_policy(min_pixels=28 * 28, max_pixels=56 * 56)
    assert capped.image_processor.size == {"shortest_edge": 784, "longest_edge": 3136}
    assert _image_tokens(capped, (112, 112)) == 4  # downscaled to 56x56

    _, raised = tiny_policy(min_pixels=224 * 224)
    assert raised.image_processor.size == {"shortest_edge": 50176, "longest_edge": 50176}
    assert _image_tokens(raised, (112, 112)) == 64  # upscaled to 224x224


# ---------------------------------------------------------------- 4-bit (QLoRA)


def _bnb_4bit_problem() -> str | None:
    """Why bitsandbytes 4-bit cannot run here, or None if a tiny nf4 layer trains."""
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
        x = torch.randn(2, 64, requires_grad=True)
        layer(x).sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            return "bitsandbytes nf4 layer gave no finite input gradient"
    except Exception as err:  # any failure means "cannot test here": report it as the skip reason
        return f"bitsandbytes 4-bit does not run on this machine: {type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="module")
def bnb():
    """The bitsandbytes module, or a clean skip (with the reason) where 4-bit cannot run."""
    if (problem := _bnb_4bit_problem()) is not None:
        pytest.skip(problem)
    import bitsandbytes

    return bitsandbytes


@pytest.mark.parametrize("gradient_checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_4bit_quantizes_language_model_and_trains_lora(bnb, gradient_checkpointing):
    model, processor = tiny_policy(quantization="4bit",
                                   gradient_checkpointing=gradient_checkpointing)
    base = model.get_base_model()
    linears = {n: m for n, m in base.model.language_model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora_" not in n}
    assert len(linears) == 14 and all(isinstance(m, bnb.nn.Linear4bit) for m in linears.values())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in base.model.visual.modules())
    assert not isinstance(base.lm_head, bnb.nn.Linear4bit)
    assert all(LORA_PARAM.fullmatch(n) for n, p in model.named_parameters() if p.requires_grad)

    # As in training: sample in eval mode first, then a training forward + backward.
    torch.manual_seed(0)
    rollout = sample(model, processor, two_images()[:1], QUESTIONS[:1],
                     SamplingArgs(group_size=2, max_new_tokens=6), temperature=1.0)
    model.train()
    logits = completion_logits(model, rollout, slice(0, 2))
    logits.logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads) == 28
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # lora_B starts at 0, so only lora_B gets a gradient on the first step; every one must.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
