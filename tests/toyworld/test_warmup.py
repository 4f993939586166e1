"""The supervised warm-up: loss on completion tokens only, padding like rollouts, the saved model
folder, the cached warm:<size> spec and configs/tiny_warmup.yaml through main.py."""

from pathlib import Path

import pytest
import torch
import yaml

from main import main
from srmcr import sources
from srmcr.logprobs import completion_logits
from srmcr.policy import PolicyArgs, check_model_spec, load_policy, resolve_model
from srmcr.rollout import SamplingArgs
from toyworld import warmup
from toyworld.recipes import RECIPES, VERSION
from toyworld.sources import warm_model
from toyworld.traces import TRACE_VERSION, TraceDataModule
from toyworld.warmup import WarmupModule, completion_nll, teacher_forced, warmup_cosine

ROOT = Path(__file__).resolve().parents[2]
SMALL_IMAGES = {"max_pixels": 56 * 56}  # 4 image tokens: fast


@pytest.fixture(scope="module")
def batch():
    dm = TraceDataModule(train="shapes:warmup?n=4&size=56", val=None, batch_size=4,
                         min_pixels=28 * 28, max_pixels=56 * 56)
    return next(iter(dm.train_dataloader()))


def tiny_module(**kwargs) -> WarmupModule:
    module = WarmupModule(policy=PolicyArgs(model="tiny:tiny", **SMALL_IMAGES),
                          sampling=SamplingArgs(max_new_tokens=8), **kwargs)
    module.configure_model()
    return module


# ---------------------------------------------------------------- pure maths


def test_completion_nll_is_the_mean_over_unmasked_tokens():
    logits = torch.zeros(1, 3, 2)  # log-softmax = log(1/2) everywhere ...
    logits[0, 1] = torch.tensor([0.0, 100.0])  # ... except token 1 at position 1: certain
    ids = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[1, 1, 0]])  # the last position is padding
    expected = (torch.log(torch.tensor(2.0)) + 0.0) / 2
    assert torch.allclose(completion_nll(logits, ids, mask), expected)
    assert torch.allclose(completion_nll(logits, ids, torch.ones_like(mask)),
                          2 * torch.log(torch.tensor(2.0)) / 3)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.25), (3, 1.0), (4, 1.0), (14, 0.1), (20, 0.1), (9, 0.55)],
)
def test_lr_warms_up_linearly_then_follows_a_cosine_to_the_floor(step, expected):
    assert warmup_cosine(step, warmup_steps=4, total_steps=14, floor=0.1) == pytest.approx(expected)


# ---------------------------------------------------------------- teacher forcing


def test_teacher_forced_pads_like_a_rollout(batch):
    module = tiny_module()
    tok = module.processor.tokenizer
    rollout = teacher_forced(module.processor, batch.images, batch.questions, batch.completions)
    lengths = rollout.completion_mask.sum(1)
    assert lengths.min() < lengths.max()  # traces differ in length: right padding is exercised
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for row, text in enumerate(batch.completions):
        n = int(lengths[row])
        assert rollout.completion_mask[row, :n].all() and not rollout.completion_mask[row, n:].any()
        assert rollout.completion_ids[row, n - 1] == end  # the model learns to stop
        assert tok.decode(rollout.completion_ids[row, :n - 1]) == text
    # Prompts: left padded, as rollout.sample makes them (questions differ in length).
    assert (rollout.prompt_mask[:, -1] == 1).all() and (rollout.prompt_mask[:, 0] == 0).any()
    assert rollout.parsed[0].well_formed and rollout.group_size == 1


def test_prompt_and_padding_are_masked_out_of_the_loss(batch):
    """The loss equals transformers' causal LM loss with labels -100 on the prompt and the
    padding; counting the prompt tokens (or the padding) would change it."""
    module = tiny_module()
    rollout = teacher_forced(module.processor, batch.images, batch.questions, batch.completions)
    with torch.no_grad():
        ours = completion_nll(completion_logits(module.model, rollout, slice(None)),
                              rollout.completion_ids, rollout.completion_mask)
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
        mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], 1)
        inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=rollout.pixel_values,
                      image_grid_thw=rollout.image_grid_thw, use_cache=False,
                      mm_token_type_ids=torch.cat([rollout.mm_token_type_ids,
                                                   torch.zeros_like(rollout.completion_ids)], 1))
        labels = ids.masked_fill(mask == 0, -100)
        with_prompt = module.model(**inputs, labels=labels).loss
        labels[:, :rollout.prompt_ids.shape[1]] = -100
        completion_only = module.model(**inputs, labels=labels).loss
    assert torch.allclose(ours, completion_only, atol=1e-5)
    assert not torch.allclose(ours, with_prompt, atol=1e-3)


def test_loss_decreases_over_a_few_steps(batch):
    torch.manual_seed(0)
    module = tiny_module()
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss, _ = module.loss(module.forced(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_language_model_trains_and_the_vision_tower_only_if_asked():
    model = tiny_module().model
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert all(p.requires_grad for p in tiny_module(train_vision=True).model.parameters())


def test_standardize_merger_folds_mean_and_spread_into_the_last_layer():
    # A merger whose last Linear maps a 2-d hidden to 2 outputs; calibration outputs:
    # dim 0 = [1, 3] (mean 2, sd sqrt(2)), dim 1 = [10, 10.5] (mean 10.25, sd sqrt(0.125)).
    merger = torch.nn.Module()
    merger.mlp = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with torch.no_grad():
        merger.mlp[0].weight.copy_(torch.eye(2))
        merger.mlp[0].bias.zero_()
    hidden = torch.tensor([[1.0, 10.0], [3.0, 10.5]])
    warmup.standardize_merger(merger, merger.mlp(hidden).detach(), std=0.5)
    out = merger.mlp(hidden).detach()
    # (x - mean) / sd * 0.5: dim 0 -> -/+ 1/sqrt(2) * 0.5, dim 1 -> -/+ (0.25/sqrt(0.125)) * 0.5
    expected = torch.tensor([[-0.5 / 2**0.5, -0.5 / 2**0.5], [0.5 / 2**0.5, 0.5 / 2**0.5]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.std(0), torch.tensor([0.5, 0.5]))


def test_fit_start_standardizes_the_vision_features_once(batch):
    module = tiny_module(vision_scale=2.0, calibration_batches=1)
    embed_std = module.model.get_input_embeddings().weight.std().item()

    class Strategy:  # one process: broadcast returns what it is given
        @staticmethod
        def broadcast(obj, src=0):
            return obj

    class Trainer:  # what on_fit_start reads
        ckpt_path = None
        strategy = Strategy()
        datamodule = TraceDataModule(train="shapes:warmup?n=4&size=56", val=None, batch_size=4,
                                     min_pixels=28 * 28, max_pixels=56 * 56)
    module._trainer = Trainer()
    module.on_fit_start()
    after = module.image_features(batch.images)
    torch.testing.assert_close(after.mean(0), torch.zeros(after.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(after.std(0), torch.full((after.shape[1],), 2.0 * embed_std),
                               atol=1e-4, rtol=1e-3)
    Trainer.ckpt_path = "resumed.ckpt"  # a resumed fit keeps the checkpoint's merger
    module.on_fit_start()
    torch.testing.assert_close(module.image_features(batch.images), after)


def test_vision_scale_must_be_positive():
    with pytest.raises(ValueError, match="vision_scale must be > 0"):
        WarmupModule(vision_scale=0.0)


def test_quantized_warmup_is_refused():
    with pytest.raises(ValueError, match="set policy.quantization=none"):
        WarmupModule(policy=_quantized())


def _quantized() -> PolicyArgs:
    args = PolicyArgs(model="tiny:tiny")
    args.quantization = "4bit"  # set after __post_init__: no bitsandbytes probe needed
    return args


# ---------------------------------------------------------------- warm:<size>


def test_warm_spec_checks_names_through_the_registry():
    check_model_spec("warm:small")
    with pytest.raises(ValueError, match=r"unknown warm model; use one of warm:small"):
        check_model_spec("warm:huge")


def test_warm_names_are_the_recipes_and_the_earlier_warm_start_keeps_its_cache(tmp_path):
    check_model_spec("warm:small-v3")  # the premise-fails warm start stays reachable
    with pytest.raises(ValueError, match=r"use one of warm:small, warm:small-v3, warm:tally, warm:tally-tiny, warm:tiny"):
        check_model_spec("warm:small-v2")
    # warm:small-v3 is the folder earlier versions built as warm:small: found, not rebuilt.
    folder = tmp_path / f"warm-small-v3.{TRACE_VERSION}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert warm_model("small-v3", tmp_path) == folder
    assert RECIPES["small"].vision_steps > 0 and RECIPES["small-v3"].vision_steps == 0


@pytest.mark.slow
def test_warm_spec_builds_once_into_a_folder_load_policy_loads(tmp_path, monkeypatch):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    path = Path(resolve_model("warm:tiny", cache_dir=tmp_path))
    assert torch.equal(torch.rand(3), expected)  # the build left the caller's RNG alone
    assert path == tmp_path / f"warm-tiny-v{VERSION}.{TRACE_VERSION}"
    assert not list(tmp_path.glob(".warm-*"))  # the temporary build folder is gone
    model, processor = load_policy(PolicyArgs(model=str(path)))
    assert processor.image_processor.size["longest_edge"] == RECIPES["tiny"].max_pixels
    warmed = model.get_base_model().state_dict()
    base, _ = load_policy(PolicyArgs(model="tiny:tiny"))
    changed = [k for k, v in base.get_base_model().state_dict().items()
               if not torch.equal(v, warmed[k])]
    assert any("language_model" in k for k in changed)
    # The recipe pre-trains the vision tower first (VisionPretrain), then keeps it frozen.
    assert "model.visual.patch_embed.proj.weight" in changed

    def no_rebuild(*args, **kwargs):
        raise AssertionError("warm:tiny was built again")
    monkeypatch.setattr(warmup, "build", no_rebuild)
    assert resolve_model("warm:tiny", cache_dir=tmp_path) == str(path)


def test_recipe_of_warm_small_is_the_warmup_config():
    config = yaml.safe_load((ROOT / "configs/tiny_warmup.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    small = RECIPES["small"]
    assert config["trainer"]["max_steps"] == small.steps
    assert data["batch_size"] == small.batch_size
    assert data["train"] == f"shapes:warmup?n={small.steps * small.batch_size}"
    assert model["optimizer"]["init_args"]["lr"] == small.lr
    assert model["optimizer"]["init_args"]["betas"] == [0.9, small.beta2]
    assert model["warmup_steps"] == small.warmup_steps
    assert model["policy"]["max_pixels"] == data["max_pixels"] == small.max_pixels
    assert model["vision_scale"] == small.vision_scale
    assert model["sampling"]["system_prompt"] == small.system_prompt
    assert data["mix"]["clean"] == small.clean


def test_tiny_config_samples_with_the_prompt_warm_small_learned():
    config = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    assert config["model"]["policy"]["model"] == "warm:small"
    assert config["model"]["sampling"]["system_prompt"] == RECIPES["small"].system_prompt


@pytest.mark.slow
def test_warmup_config_trains_validates_and_exports_through_main(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "-c", str(ROOT / "configs/tiny_warmup.yaml"),
                "--model.policy.model=tiny:tiny", "--model.policy.max_pixels=3136",
                "--model.sampling.max_new_tokens=8", "--model.warmup_steps=1",
                "--data.train=shapes:warmup?n=4&size=56", "--data.val=shapes:val?n=2&size=56",
                "--data.batch_size=2", "--data.min_pixels=784", "--data.max_pixels=3136",
                "--trainer.max_steps=2", "--trainer.val_check_interval=2"])
    assert isinstance(cli.model, WarmupModule)
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/accuracy", "val/format_rate"):
        assert key in metrics, sorted(metrics)
    folder = Path(cli.trainer.log_dir) / "model"
    model, _ = load_policy(PolicyArgs(model=str(folder)))
    assert torch.equal(model.get_base_model().lm_head.weight, cli.model.model.lm_head.weight)


@pytest.mark.slow
def test_first_srmcr_run_on_a_warm_spec_builds_it_then_trains(tmp_path, monkeypatch):
    """The registered warm: builder runs (a Trainer inside SR-MCR's configure_model) once, and
    the run goes on from the warmed-up weights."""
    monkeypatch.chdir(tmp_path)
    warm = sources.model_source("warm")
    monkeypatch.setitem(sources._MODELS, "warm", sources.ModelSource(
        lambda name, cache: warm_model(name, tmp_path / "cache"), warm.names))
    cli = main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "--model.policy.model=warm:tiny",
                "--model.sampling.max_new_tokens=8", "--data.train=shapes:train?n=8&size=56",
                "--data.batch_size=2", "--model.policy.max_pixels=3136", "--data.max_pixels=3136",
                "--data.min_pixels=784", "--trainer.fast_dev_run=1"])
    assert (tmp_path / "cache" / f"warm-tiny-v{VERSION}.{TRACE_VERSION}").is_dir()
    assert cli.trainer.global_step == 1
