"""The cue contract: self-registration by name, inputs named by ``score``'s signature, and the
running mean as a torchmetrics ``Metric`` (update / compute / reset, summed across ranks)."""

import importlib
import inspect
import math
import pkgutil

import pytest
import torch
from torch import Tensor

import srmcr.cues
from srmcr.cues import CUES, Cue, CueInputs, ScoreMean
from srmcr.reward import SelfReward
from tests.cues.fakes import make_rollout

NAN = math.nan


@pytest.fixture
def registry():
    """Cue classes defined by a test leave the registry as they found it."""
    before = dict(CUES)
    yield CUES
    CUES.clear()
    CUES.update(before)


def test_every_module_of_the_package_is_imported_and_its_cues_registered():
    modules = [m.name for m in pkgutil.iter_modules(srmcr.cues.__path__)]
    assert "visual_grounding" in modules and "base" in modules
    for name in modules:
        module = importlib.import_module(f"srmcr.cues.{name}")
        defined = [c for c in vars(module).values() if inspect.isclass(c)
                   and issubclass(c, Cue) and c.__module__ == module.__name__ and "name" in vars(c)]
        assert all(CUES[c.name] is c for c in defined), name
        assert defined or name == "base", f"srmcr/cues/{name}.py defines no cue"


def test_a_new_cue_registers_itself_and_the_reward_accepts_it(registry):
    class Brevity(Cue):
        name = "brevity_for_test"

        def score(self, rollout, blank_logp: Tensor) -> Tensor:  # (N,)
            return torch.tensor([1.0 / (1 + len(t)) for t in rollout.texts]) + 0 * blank_logp[:, 0]

    assert registry["brevity_for_test"] is Brevity and Brevity.needs == ("blank_logp",)
    reward = SelfReward(cues=["brevity_for_test", "lexical_fidelity"])
    assert reward.needs == {"blank_logp"}
    rollout = make_rollout(["q"] * 2, ["abc", "a"], group_size=2)
    scores = reward.score(rollout, CueInputs(blank_logp=torch.zeros(2, 4)))
    assert scores[:, 0].tolist() == pytest.approx([1 / 4, 1 / 2])


def test_a_cue_input_must_be_a_field_of_cue_inputs(registry):
    with pytest.raises(TypeError, match=r"takes \['reference'\]: .* fields of CueInputs "
                                        r"\(blank_logp, policy\)"):
        class NeedsAnswers(Cue):
            name = "needs_answers_for_test"

            def score(self, rollout, reference) -> Tensor:
                return torch.zeros(len(rollout))
    assert "needs_answers_for_test" not in registry


def test_two_cues_cannot_share_a_name(registry):
    with pytest.raises(TypeError, match="two cues named 'lexical_fidelity'"):
        class Another(Cue):
            name = "lexical_fidelity"

            def score(self, rollout) -> Tensor:
                return torch.zeros(len(rollout))
    assert CUES["lexical_fidelity"].__module__ == "srmcr.cues.lexical_fidelity"


def test_running_mean_follows_the_torchmetrics_contract():
    mean = ScoreMean()
    mean.update(torch.tensor([0.2, NAN, 0.4]))  # the abstention is left out
    mean.update(torch.tensor([1.0]))
    assert mean.compute().item() == pytest.approx((0.2 + 0.4 + 1.0) / 3)
    # torchmetrics' own forward: the batch's value, while the states accumulate.
    assert mean(torch.tensor([0.0, 1.0])).item() == pytest.approx(0.5)
    assert mean.compute().item() == pytest.approx((1.6 + 1.0) / 5)
    one, other = ScoreMean(), ScoreMean()  # two ranks' states are summed, then divided
    one.update(torch.tensor([0.5]))
    other.update(torch.tensor([0.0, 0.0, 0.4]))
    one.merge_state(other)
    assert one.compute().item() == pytest.approx(0.9 / 4)
    assert mean.state_dict() == {}  # not checkpointed: a validation's mean starts afresh
    mean.reset()
    mean.update(torch.tensor([NAN]))
    assert math.isnan(mean.compute().item())  # nothing scored: undefined, not 0
