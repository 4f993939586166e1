"""Confidence-aware cooling: the pure rule by hand, then the callback inside a real Trainer."""

import math
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.cooling import ConfidenceCooling, cooled_temperature
from srmcr.errors import ConfigError

# ---------------------------------------------------------------- the pure rule (defaults:
# t_start 1.0, t_end 0.7, cooling_steps 1000, kappa 2, t_min 0.3, t_max 1.5, reheat 1.25)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),  # 0.7 + 0.3 * 1
        (500, 0.85),  # 0.7 + 0.3 * 0.5
        (1000, 0.7),  # 0.7 + 0.3 * 0
        (2500, 0.7),  # max(0, 1 - 2.5) = 0: flat after cooling_steps
    ],
)
def test_cools_linearly_at_target_confidence(step, expected):
    assert cooled_temperature(step, 0.6, 0.0, c_target=0.6) == pytest.approx(expected)


def test_confidence_above_target_raises_and_below_lowers():
    # 0.85 * exp(2 * (0.6 - 0.5)) = 0.85 * 1.2214028 = 1.0381924
    assert cooled_temperature(500, 0.6, 0.0, c_target=0.5) == pytest.approx(1.0381924, abs=1e-7)
    # 0.85 * exp(2 * (0.4 - 0.5)) = 0.85 * 0.8187308 = 0.6959211
    assert cooled_temperature(500, 0.4, 0.0, c_target=0.5) == pytest.approx(0.6959211, abs=1e-7)


def test_clipped_to_bounds():
    # 1.0 * exp(2 * 0.8) = 4.95 -> t_max 1.5;  0.7 * exp(-2) = 0.095 -> t_min 0.3
    assert cooled_temperature(0, 1.0, 0.0, c_target=0.2) == 1.5
    assert cooled_temperature(1000, 0.0, 0.0, c_target=1.0) == 0.3


@pytest.mark.parametrize(
    ("step", "c_ema", "collapse", "expected"),
    [
        (500, 0.5, 0.75, 0.85 * 1.25),  # 1.0625
        (500, 0.5, 0.5, 0.85),  # exactly 0.5 is not a collapse
        (1000, 0.0, 1.0, 0.3 * 1.25),  # reheat after the clip: lifts T off t_min to 0.375
        (0, 0.6, 0.75, 1.5),  # 1.0 * exp(0.2) = 1.2214 * 1.25 = 1.527 -> clipped again to 1.5
    ],
)
def test_reheat_on_collapse(step, c_ema, collapse, expected):
    assert cooled_temperature(step, c_ema, collapse, c_target=0.5) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(t_min=0.0), r"^ConfidenceCooling t_min=0.0: set it above 0$"),
        (dict(t_min=1.0, t_max=0.5), r"^ConfidenceCooling t_max=0.5: set it to t_min=1.0 or more"),
        (dict(t_start=0.0), r"^ConfidenceCooling t_start=0.0: set it above 0$"),
        (dict(t_end=0.0), r"^ConfidenceCooling t_end=0.0: set it above 0$"),
        (dict(cooling_steps=0), r"^ConfidenceCooling cooling_steps=0: set it to 1 or more"),
        (dict(kappa=-1.0), r"^ConfidenceCooling kappa=-1.0: set it to 0 \(no confidence term\)"),
        (dict(c_target="median"), r"^ConfidenceCooling c_target='median': set it to auto or a"),
        (dict(c_target=1.5), r"^ConfidenceCooling c_target=1.5: set it to auto or a confidence"),
        (dict(auto_steps=0), r"^ConfidenceCooling auto_steps=0: set it to 1 or more$"),
        (dict(ema=1.0), r"^ConfidenceCooling ema=1.0: set it to at least 0 .* and below 1$"),
        (dict(reheat=0.9), r"^ConfidenceCooling reheat=0.9: set it to 1 \(off\) or more$"),
        (dict(collapse_threshold=2.0), r"^ConfidenceCooling collapse_threshold=2.0: set it in"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ConfidenceCooling(**kwargs)


def test_a_module_that_returns_no_confidence_is_named():
    cooling = ConfidenceCooling(**RULE)
    module = SimpleNamespace(temperature=1.0, log=lambda *a, **k: None)
    with pytest.raises(TypeError, match="reads 'confidence' and 'collapse' from "
                                        "SimpleNamespace.training_step's returned dict"):
        cooling.on_train_batch_end(_stub_trainer(1, lambda obj, src: obj), module,
                                   {"loss": 0.0}, None, 0)


# ---------------------------------------------------------------- the callback in a Trainer

RULE = dict(t_start=1.0, t_end=0.5, cooling_steps=10, kappa=2.0, auto_steps=3, ema=0.5)
CONFIDENCE = [0.5, 0.7, 0.6, 0.9, 0.9, 0.2, 0.2, 0.6]
COLLAPSE = [0.0, 0.0, 0.0, 0.0, 0.75, 0.0, 0.0, 0.5]
# Temperature used by steps 0..8. c_target = mean(0.5, 0.7, 0.6) = 0.6, known after step 2.
# base(s) = 0.5 + 0.5 * (1 - s/10).
# EMA (momentum 0.5): 0.5, 0.6, 0.6, 0.75, 0.825, 0.5125, 0.35625, 0.478125.
EXPECTED = [
    1.0,  # fresh run: t_start
    0.95,  # base(1), still collecting: no confidence term
    0.90,  # base(2)
    0.85,  # base(3) * exp(2 * (0.6 - 0.6))
    0.8 * math.exp(2 * (0.75 - 0.6)),  # 1.0798870
    0.75 * math.exp(2 * (0.825 - 0.6)) * 1.25,  # 1.1762341 reheated -> 1.4702927
    0.7 * math.exp(2 * (0.5125 - 0.6)),  # 0.5876199
    0.65 * math.exp(2 * (0.35625 - 0.6)),  # 0.3992039
    0.6 * math.exp(2 * (0.478125 - 0.6)),  # 0.4702101 (collapse exactly 0.5: no reheat)
]


class ScriptedModule(BoringModel):
    """Plays a scripted confidence/collapse per step and records the temperature each step used."""

    def __init__(self):
        super().__init__()
        self.temperature = 0.123  # the callback must overwrite it at train start
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(self.temperature)
        return {**super().training_step(batch, batch_idx),
                "confidence": CONFIDENCE[self.global_step], "collapse": COLLAPSE[self.global_step]}


def _fit(max_steps, cooling, ckpt_path=None, callbacks=(), root=None):
    module = ScriptedModule()
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=bool(callbacks), callbacks=[cooling, *callbacks],
                        default_root_dir=root)
    trainer.fit(module, ckpt_path=ckpt_path)
    return module, trainer


def test_trajectory_follows_the_rule_with_auto_target(tmp_path):
    cooling = ConfidenceCooling(**RULE)
    module, trainer = _fit(8, cooling, root=tmp_path)
    assert module.seen == pytest.approx(EXPECTED[:8], abs=1e-6)
    assert module.temperature == pytest.approx(EXPECTED[8], abs=1e-6)
    assert cooling.c_target == pytest.approx(0.6)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert logged == pytest.approx({"train/confidence_ema": 0.478125})


@pytest.mark.filterwarnings("ignore:.*callbacks used to create the checkpoint")
@pytest.mark.filterwarnings("ignore:.*dataloader is not resumable")
def test_resume_from_checkpoint_continues_exactly(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    _fit(6, ConfidenceCooling(**RULE), callbacks=[ckpt], root=tmp_path)  # runs past the checkpoint
    resumed, _ = _fit(8, ConfidenceCooling(**RULE), ckpt_path=tmp_path / "epoch=0-step=4.ckpt",
                      root=tmp_path)
    assert resumed.seen == pytest.approx(EXPECTED[4:8], abs=1e-6)
    assert resumed.temperature == pytest.approx(EXPECTED[8], abs=1e-6)


# ---------------------------------------------------------------- state without a Trainer


def _stub_trainer(global_step, broadcast):
    return SimpleNamespace(global_step=global_step, strategy=SimpleNamespace(broadcast=broadcast))


def _fed(cooling, confidences):
    for c in confidences:
        cooling._observe(c)
    cooling.temperature = cooling.temperature_at(step=len(confidences))
    return cooling


def test_state_dict_round_trip_mid_collection():
    old = _fed(ConfidenceCooling(**RULE), [0.5, 0.7])  # c_target not resolved yet
    new = ConfidenceCooling(**RULE)
    new.load_state_dict(old.state_dict())
    assert new.state_dict() == old.state_dict()
    module = SimpleNamespace(temperature=1.0)
    new.on_train_start(SimpleNamespace(global_step=2), module)
    assert module.temperature == pytest.approx(0.9)  # the restored T, not the rule's fresh start
    for cooling in (old, new):  # the third step resolves c_target identically
        cooling._observe(0.6)
    assert new.state_dict() == old.state_dict() and new.c_target == pytest.approx(0.6)


def test_fixed_target_acts_from_the_first_step_and_wins_over_a_checkpoint():
    cooling = _fed(ConfidenceCooling(**{**RULE, "c_target": 0.5}), [0.7])
    # base(1) * exp(2 * (0.7 - 0.5))
    assert cooling.temperature == pytest.approx(0.95 * math.exp(2 * 0.2))
    other = ConfidenceCooling(c_target=0.4)
    other.load_state_dict(cooling.state_dict())
    assert other.c_target == 0.4


def test_nan_confidence_leaves_the_ema_alone():
    cooling = _fed(ConfidenceCooling(**RULE), [0.5])
    module = SimpleNamespace(temperature=1.0, log=lambda *a, **k: None)
    trainer = _stub_trainer(2, broadcast=lambda obj, src: obj)
    cooling.on_train_batch_end(trainer, module, {"confidence": float("nan"), "collapse": 0.0},
                               None, 1)
    assert cooling.confidence_ema == 0.5 and cooling.auto_count == 1
    assert module.temperature == pytest.approx(0.9)


def test_every_rank_takes_rank_zero_state():
    cooling = _fed(ConfidenceCooling(**RULE), [0.5])
    module = SimpleNamespace(temperature=1.0, log=lambda *a, **k: None)
    rank_zero = {"temperature": 0.77, "confidence_ema": 0.61, "c_target": None, "auto_sum": 1.2,
                 "auto_count": 2}  # what this rank would compute, up to float drift on rank 0
    trainer = _stub_trainer(2, broadcast=lambda obj, src: rank_zero)
    cooling.on_train_batch_end(trainer, module, {"confidence": 0.7, "collapse": 0.0}, None, 1)
    assert cooling.state_dict() == rank_zero and module.temperature == 0.77


def test_arguments_show_in_cli_help():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(ConfidenceCooling, "cooling")
    help_text = parser.format_help()
    assert "Target confidence" in help_text and "Momentum of the confidence EMA" in help_text
    assert parser.parse_args(["--cooling.c_target", "auto"]).cooling.c_target == "auto"
    assert parser.parse_args(["--cooling.c_target", "0.4"]).cooling.c_target == 0.4


def test_default_schedule_spans_the_run(tmp_path):
    cooling = ConfidenceCooling(t_start=1.0, t_end=0.5, kappa=0.0)
    module, _ = _fit(8, cooling, root=tmp_path)
    assert cooling.rule["cooling_steps"] == 8
    # kappa = 0: T is the plain schedule; the step-4 batch sampled at 1 - 0.5 * 4/8 = 0.75
    assert module.seen[4] == pytest.approx(0.75)
