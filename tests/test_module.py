"""SRMCRModule: one real step on the tiny model changes every LoRA weight and nothing frozen."""

import functools
from dataclasses import replace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from datamodules.image_question import ImageQuestionDataModule
from srmcr.errors import ConfigError
from srmcr.module import GRPOArgs, SRMCRModule, StepRecord
from srmcr.policy import LoraArgs, PolicyArgs
from srmcr.reward import SelfReward
from srmcr.rollout import SamplingArgs
from tests.fixtures import with_answers


def _module(cues=("lexical_fidelity", "non_redundancy", "visual_grounding"), **grpo) -> SRMCRModule:
    return SRMCRModule(
        policy=PolicyArgs(model="tiny:tiny", max_pixels=56 * 56, lora=LoraArgs(r=4, alpha=8)),
        sampling=SamplingArgs(group_size=4, max_new_tokens=12),
        grpo=GRPOArgs(**{"micro_batch_size": 2, **grpo}),
        reward=SelfReward(cues=list(cues)),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5))


class Outputs(L.Callback):
    """What ``training_step`` hands the callbacks, step by step."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(outputs)


def answering(monkeypatch) -> None:
    """The module's sampler with an answer in every completion (``with_answers``)."""
    import srmcr.module as module_lib
    monkeypatch.setattr(module_lib, "sample", with_answers(module_lib.sample))


def _fit(module: SRMCRModule, steps: int, tmp_path, callbacks=()) -> L.Trainer:
    data = ImageQuestionDataModule(train="shapes:train?n=32&size=56", batch_size=2,
                                   min_pixels=28 * 28, max_pixels=56 * 56)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=list(callbacks))
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.mark.parametrize("grpo", [dict(beta=0.04), dict(beta=0.0, num_iterations=2,
                                                        aggregation="dr_grpo")])
def test_one_step_changes_every_lora_weight_and_nothing_frozen(tmp_path, monkeypatch, grpo):
    # The random tiny model never answers, and every answer-reading cue scores an unanswered
    # completion 0: give each completion an answer so the rewards (and advantages) vary.
    answering(monkeypatch)
    module = _module(**grpo)
    module.configure_model()
    # LoRA B starts at zero, so A gets no gradient in the first step: start B non-zero.
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    outputs = Outputs()
    _fit(module, grpo.get("num_iterations", 1), tmp_path, [outputs])
    changed = {n for n, p in module.model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert changed == trainable
    # What the callbacks get: the detached loss, the rank-averaged signals, the step's record.
    out = outputs.seen[-1]
    assert out.keys() == {"loss", "confidence", "collapse", "step"}
    assert out["loss"].grad_fn is None and 0.0 < out["confidence"] <= 1.0
    assert 0.0 <= out["collapse"] <= 1.0
    assert isinstance(out["step"], StepRecord) and len(out["step"].advantages) == 8


def test_checkpoint_holds_adapter_and_reward_state_only(tmp_path):
    module = _module()
    trainer = _fit(module, 1, tmp_path)
    path = tmp_path / "step.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable <= set(state)
    assert set(state) - trainable == {k for k in state if k.startswith("reward.")}
    assert any("reliability_ema" in k for k in state)
    assert "optimizer_states" in torch.load(path, weights_only=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"beta": -0.1}, r"^grpo.beta=-0.1: set it to 0 \(no KL term, no reference pass\) or more$"),
    ({"clip_low": 0.0}, r"^grpo.clip_low=0.0: set it above 0 and below 1"),
    ({"clip_low": 1.0}, r"^grpo.clip_low=1.0: set it above 0 and below 1"),
    ({"clip_high": 0.0}, r"^grpo.clip_high=0.0: set it above 0"),
    ({"aggregation": "mean"}, r"^grpo.aggregation='mean': set it to one of grpo, token, dr_grpo$"),
    ({"num_iterations": 0}, r"^grpo.num_iterations=0: set it to 1 or more"),
    ({"micro_batch_size": 0}, r"^grpo.micro_batch_size=0: set it to 1 or more$"),
    ({"max_grad_norm": 0.0}, r"^grpo.max_grad_norm=0.0: set it above 0, or null"),
    ({"max_consecutive_skips": 0}, r"^grpo.max_consecutive_skips=0: set it to 1 or more$"),
    ({"collapse_patience": 0}, r"^grpo.collapse_patience=0: set it to 1 or more$"),
])
def test_invalid_grpo_args_name_the_field_the_value_and_what_to_set(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GRPOArgs(**kwargs)


def test_optimizer_arguments_are_checked_before_the_model_loads(tmp_path):
    module = _module()
    module.optimizer_factory = functools.partial(torch.optim.AdamW, lr=-1e-4)
    with pytest.raises(ConfigError, match=r"^model.optimizer \(AdamW\) refuses its arguments: "
                                          r"Invalid learning rate: -0.0001; fix them"):
        _fit(module, 1, tmp_path)
    assert module.model is None  # nothing was loaded


def test_micro_batch_that_does_not_divide_the_step_is_rejected_before_loading(tmp_path):
    module = _module(micro_batch_size=3)
    with pytest.raises(ValueError, match=r"micro_batch_size=3 does not divide the 8 completions"
                                         r".*use one of \[1, 2, 4, 8\]"):
        _fit(module, 1, tmp_path)
    assert module.model is None  # nothing was loaded


def test_without_grounding_there_is_no_extra_pass_and_confidence_comes_from_the_loss_pass(
        tmp_path, monkeypatch):
    import srmcr.module as module_lib

    calls = []
    inner = module_lib.rollout_logprobs
    monkeypatch.setattr(module_lib, "rollout_logprobs",
                        lambda *a, **k: calls.append(1) or inner(*a, **k))
    module = _module(cues=("lexical_fidelity", "non_redundancy"), beta=0.0)
    outputs = Outputs()
    _fit(module, 1, tmp_path, [outputs])
    assert calls == []  # beta = 0, no grounding, mu = 1: generate + loss pass only
    assert 0.0 < outputs.seen[0]["confidence"] <= 1.0


def test_a_step_logs_every_key_with_the_values_of_its_tensors(tmp_path):
    # The step's values reach the logger exactly as one float() per tensor would give them
    # (Lightning keeps each as a float32 tensor), through one copy to the host.
    module, outputs = _module(beta=0.04), Outputs()
    trainer = _fit(module, 1, tmp_path, [outputs])
    out = outputs.seen[0]
    rollout, reward = out["step"].rollout, out["step"].reward
    mask, G = rollout.completion_mask, rollout.group_size
    ids = rollout.completion_ids.view(-1, G, mask.shape[1])
    want = {"loss": out["loss"], "temperature": rollout.temperature,
            "confidence": (rollout.max_prob * mask).sum() / mask.sum(),
            "collapse": (ids == ids[:, :1]).all(-1).all(-1).float().mean(),
            "frac_zero_std_groups": (reward.rewards.view(-1, G).std(1) < 1e-6).float().mean(),
            "completion_len": mask.sum(1).float().mean(),
            "truncated": rollout.truncated.float().mean(), "skipped_updates": 0.0,
            **reward.stats}
    logged = trainer.callback_metrics
    for key, value in want.items():
        assert logged[f"train/{key}"].item() == torch.tensor(float(value)).item(), key
    assert out["confidence"] == float(want["confidence"])
    assert out["collapse"] == float(want["collapse"])
    design = ["loss", "kl", "kl_t", "clip_frac", "reward", "reward_raw", "format_rate",
              "frac_zero_std_groups", "completion_len", "temperature", "confidence", "collapse"]
    cues = [f"{kind}/{cue}" for kind in ("reward", "weight") for cue in module.reward.names]
    assert {f"train/{k}" for k in design + cues} <= set(logged)
    assert {"reward", "T", "data/skipped/bad_image"} <= set(logged)


class Recorder(Logger):
    """Every row of metrics a logger receives."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    name, version = "recorder", 0

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


def test_unchanged_values_are_not_logged_again_yet_every_step_has_every_key(tmp_path,
                                                                             monkeypatch):
    # log_changed skips a self.log whose value Lightning already holds for the epoch: the logger,
    # the progress bar and callback_metrics get the same rows as logging every key every step,
    # across epochs too (Lightning forgets the step values at an epoch's start).
    def run(log_every_key: bool) -> tuple[list, list[int], dict, dict]:
        calls: list[int] = []
        log_dict = SRMCRModule.log_dict
        monkeypatch.setattr(SRMCRModule, "log_dict", lambda self, d, **kw: calls.append(
            len(d)) or log_dict(self, d, **kw))
        if log_every_key:
            monkeypatch.setattr(SRMCRModule, "log_changed",
                                lambda self, d, **kw: SRMCRModule.log_dict(self, d, **kw))
        L.seed_everything(0)
        recorder = Recorder()
        trainer = L.Trainer(max_steps=18, limit_train_batches=8, accelerator="cpu",
                            logger=recorder, log_every_n_steps=1, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)
        module = _module(cues=("lexical_fidelity",), beta=0.0)
        module.sampling = replace(module.sampling, max_new_tokens=2)
        trainer.fit(module, datamodule=ImageQuestionDataModule(
            train="shapes:train?n=32&size=56", batch_size=2, min_pixels=28 * 28,
            max_pixels=56 * 56, shuffle_buffer=0))
        monkeypatch.undo()
        return (recorder.rows, calls, dict(trainer.callback_metrics),
                dict(trainer.progress_bar_metrics))

    rows, calls, callback, bar = run(log_every_key=False)
    all_rows, all_calls, all_callback, all_bar = run(log_every_key=True)
    assert rows == all_rows and len(rows) == 18 and {r[1]["epoch"] for r in rows} == {0, 1, 2}
    assert callback.keys() == all_callback.keys() and bar == all_bar
    assert all(torch.equal(callback[k], all_callback[k]) for k in callback)
    assert sum(calls) < 0.8 * sum(all_calls)  # the data/skipped counters, T, ... not again


def test_checkpoint_of_another_lora_configuration_is_rejected(tmp_path):
    trainer = _fit(_module(), 1, tmp_path)
    path = tmp_path / "r4.ckpt"
    trainer.save_checkpoint(path)
    other = SRMCRModule(policy=PolicyArgs(model="tiny:tiny", max_pixels=56 * 56,
                                          lora=LoraArgs(r=4, alpha=8, target_modules=["q_proj"])),
                        sampling=SamplingArgs(group_size=4, max_new_tokens=12),
                        reward=SelfReward(cues=["lexical_fidelity"]))
    other.configure_model()
    state = torch.load(path, weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if "q_proj" not in k}
    with pytest.raises(ValueError, match=r"lacks \d+ of the \d+ LoRA weights .*policy.lora"):
        other.on_load_checkpoint(state)


def _validate(module: SRMCRModule, tmp_path, callbacks=()) -> dict[str, float]:
    data = ImageQuestionDataModule(val="shapes:val?n=4&size=56", batch_size=2,
                                   min_pixels=28 * 28, max_pixels=56 * 56)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=list(callbacks))
    trainer.validate(module, datamodule=data, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_sampled_validation_logs_validity_without_moving_the_reward(tmp_path, monkeypatch):
    module = _module(cues=("lexical_fidelity", "answer_agreement"))
    module.sampling.val_group_size = 3
    module.reward.reliability_ema.fill_(0.25)
    # The random tiny model answers nothing: make every other sampled completion "right", so
    # each group mixes right and wrong and the AUCs are defined.
    from srmcr import evaluation
    real = evaluation.correctness
    monkeypatch.setattr(evaluation, "correctness", lambda answers, refs: [
        i % 2 == 0 for i in range(len(answers))] if len(answers) > 2 else real(answers, refs))
    updates = []
    combine = module.reward.combine
    monkeypatch.setattr(module.reward, "combine", lambda *a, update=True: updates.append(update)
                        or combine(*a, update=update))
    metrics = _validate(module, tmp_path)
    assert metrics["val/sample_accuracy"] == pytest.approx(6 / 12)  # 4 questions x G = 3
    assert metrics["val/mixed_groups"] == 4
    for key in ("val/reward_auc", "val/auc/lexical_fidelity", "val/auc/answer_agreement",
                "val/auc/well_formed", "val/auc/self_certainty", "val/majority_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "val/accuracy" in metrics  # greedy, as before
    # Paired maj@3 - greedy: the random model gives no answer, so no majority answer exists and
    # greedy is wrong too (the patched correctness leaves the 2-record greedy batches alone).
    assert metrics["val/majority_lead"] == 0.0
    assert updates == [False, False]  # the reliability is measured, never trained
    assert module.reward.reliability_ema.tolist() == [0.25, 0.25]
    # The pre-flight lets the reliability learn from the sampled groups, as training would.
    from callbacks.preflight import PreflightReport
    report = PreflightReport(bootstrap_samples=50)
    _validate(module, tmp_path, [report])
    assert [b.group_size for b in report.batches] == [3, 3] and report.summary["questions"] == 4
    assert "\nmaj@3" in report.text and updates[2:] == [True, True]


def test_sampled_validation_off_logs_greedy_metrics_only(tmp_path):
    module = _module(cues=("lexical_fidelity",))
    module.sampling.val_group_size = 0
    metrics = _validate(module, tmp_path)
    assert "val/accuracy" in metrics and not any("auc" in k or "sample_acc" in k for k in metrics)


def first_of_group(prompts, completions, **fields):
    """Reward 1 for the first completion of each group of 4, 0 for the others."""
    return [float(i % 4 == 0) for i in range(len(completions))]


def test_an_update_raises_the_completions_the_reward_prefers(tmp_path, monkeypatch):
    """The direction of the step: after one update, the rewarded completion of each group has
    gained log-probability against its group's others (advantages, rows and loss line up)."""
    from srmcr.logprobs import rollout_logprobs
    from srmcr.reward_functions import RewardFunctionArgs
    answering(monkeypatch)
    module = _module(beta=0.0)
    module.reward = SelfReward(cues=[], functions=[
        RewardFunctionArgs("tests.test_module:first_of_group")])
    module.optimizer_factory = lambda p: torch.optim.SGD(p, lr=0.05)
    module.configure_model()
    with torch.no_grad():  # LoRA B starts at zero: A gets no gradient in the first step
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    outputs = Outputs()
    before = {}

    class Before(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before["state"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()
                               if p.requires_grad}
    _fit(module, 1, tmp_path, [Before(), outputs])
    rollout = outputs.seen[-1]["step"].rollout
    mask = rollout.completion_mask.float()
    with torch.no_grad():
        after = (rollout_logprobs(module.model, rollout, 8).logp_t1 * mask).sum(1)
        module.load_state_dict(before["state"], strict=False)
        start = (rollout_logprobs(module.model, rollout, 8).logp_t1 * mask).sum(1)
    gain = (after - start).view(-1, 4)  # (B, G)
    assert (gain[:, 0] > gain[:, 1:].mean(1)).all(), gain
