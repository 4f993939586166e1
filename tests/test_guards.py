"""Non-finite rewards, losses and gradients skip the update; k in a row stop the run."""

import logging

import pytest
import torch

from srmcr.guards import CollapseMonitor, NonFiniteUpdate, UpdateGuard
from srmcr.reward import RewardOutput
from tests.test_module import _fit, _module


def _poison_reward(module, steps_bad):
    """Make the reward NaN for the first ``steps_bad`` calls."""
    forward, calls = module.reward.forward, []

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append(1)
        if len(calls) <= steps_bad:
            rewards = out.rewards.clone()
            rewards[0] = float("nan")
            return RewardOutput(**{**vars(out), "rewards": rewards})
        return out
    module.reward.forward = poisoned


def test_nan_reward_skips_the_update_and_leaves_weights_untouched(tmp_path, caplog):
    module = _module(beta=0.0)
    module.configure_model()
    _poison_reward(module, steps_bad=2)
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    with caplog.at_level(logging.WARNING, logger="srmcr.guards"):
        _fit(module, 2, tmp_path)
    assert all(torch.equal(p, before[n]) for n, p in module.model.named_parameters())
    assert module.guard.skipped == 2
    assert "non-finite reward or advantage" in caplog.text and "shapes-train-0-" in caplog.text


def test_nan_gradient_is_skipped(tmp_path):
    module = _module(beta=0.0)
    module.configure_model()
    lora = next(p for n, p in module.model.named_parameters() if "lora_A" in n)
    lora.register_hook(lambda g: torch.full_like(g, float("nan")))
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _fit(module, 1, tmp_path)
    assert module.guard.skipped == 1
    assert all(torch.equal(p, before[n]) for n, p in module.model.named_parameters())


def test_k_skips_in_a_row_stop_the_run_with_what_was_non_finite(tmp_path):
    module = _module(beta=0.0, max_consecutive_skips=2)
    module.configure_model()
    _poison_reward(module, steps_bad=5)
    with pytest.raises(NonFiniteUpdate, match=r"2 updates in a row .* non-finite reward"):
        _fit(module, 4, tmp_path)


def test_guard_counts_reset_after_a_good_update():
    guard = UpdateGuard(max_consecutive=2)
    guard.skip("loss", ["a"], step=0)
    guard.ok()
    guard.skip("loss", ["b"], step=2)  # not two in a row: no error
    assert (guard.skipped, guard.consecutive) == (2, 1)
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        UpdateGuard(0)


def test_collapse_warns_once_after_patience(caplog):
    monitor = CollapseMonitor(patience=3)
    with caplog.at_level(logging.WARNING, logger="srmcr.guards"):
        fired = [monitor.update(f, 0.7, step) for step, f in enumerate([1, 1, 0.5, 1, 1, 1, 1])]
    assert fired == [False, False, False, False, False, True, False]
    assert "Raise the sampling temperature" in caplog.text


def test_require_raises_the_first_failing_rule_as_a_config_error():
    from srmcr.errors import ConfigError, require

    require({"never shown": True})
    with pytest.raises(ConfigError, match="^second$"):
        require({"first": True, "second": False, "third": False})
