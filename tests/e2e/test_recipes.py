"""Every recipe overlay trains through main.py, and its extra policy passes run once per step."""

import math
from pathlib import Path

import pytest
import yaml

import srmcr.eval_steps
import srmcr.evaluation
import srmcr.module
from callbacks.cooling import ConfidenceCooling
from main import main
from srmcr.policy_view import PolicyView
from srmcr.reward import SelfReward
from tests.e2e.test_main import FAST, ROOT
from tests.fixtures import with_answers

RECIPE_DIR = ROOT / "configs" / "recipes"
SRMCR = ["semantic_alignment", "lexical_fidelity", "non_redundancy", "visual_grounding",
         "step_consistency"]
RECIPES = {  # file -> the cues it enables
    "srmcr.yaml": [*SRMCR, "answer_support"],
    "mm_upt.yaml": ["answer_agreement"],
    "vision_sr1_labelfree.yaml": ["perception_sufficiency", "answer_agreement"],
    "srmcr_plus.yaml": [*SRMCR, "answer_agreement", "self_verification"],
}
EXTRA_PASSES = {"perception_sufficiency": "generate_without_image",
                "self_verification": "next_token_logits"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_recipe_is_listed_here_with_its_cues():
    assert sorted(p.name for p in RECIPE_DIR.glob("*.yaml")) == sorted(RECIPES)
    for name, cues in RECIPES.items():
        assert _load(RECIPE_DIR / name)["model"]["reward"]["init_args"]["cues"] == cues, name


def test_mm_upt_keeps_tiny_callbacks_but_cooling():
    tiny = _load(ROOT / "configs" / "tiny.yaml")["trainer"]["callbacks"]
    mm_upt = _load(RECIPE_DIR / "mm_upt.yaml")["trainer"]["callbacks"]
    assert mm_upt == [c for c in tiny if c["class_path"] != "callbacks.cooling.ConfidenceCooling"]


def _counting(owner, name: str, counts: dict, monkeypatch) -> None:
    inner = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return inner(*args, **kwargs)
    monkeypatch.setattr(owner, name, counted)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_fast_dev_run(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for owner, name in [(srmcr.module, "sample"), (srmcr.eval_steps, "sample"),  # train, val
                        (srmcr.evaluation, "generate_greedy")]:
        monkeypatch.setattr(owner, name, with_answers(getattr(owner, name), think=False))
    counts: dict[str, int] = {}
    for owner, name in [(SelfReward, "score"), *((PolicyView, m) for m in EXTRA_PASSES.values())]:
        _counting(owner, name, counts, monkeypatch)
    cli = main(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(RECIPE_DIR / recipe),
                *FAST, "--trainer.fast_dev_run=2"])
    cues = RECIPES[recipe]
    assert cli.model.reward.names == cues
    cooling = [c for c in cli.trainer.callbacks if isinstance(c, ConfidenceCooling)]
    assert (not cooling) == (recipe == "mm_upt.yaml")  # MM-UPT samples at a fixed temperature
    scored = counts["score"]  # training steps and validation batches
    assert scored >= 2
    for cue, method in EXTRA_PASSES.items():  # one batched call per scored batch, or none
        assert counts.get(method, 0) == (scored if cue in cues else 0), method
    metrics = cli.trainer.callback_metrics
    for cue in set(cues) - set(SRMCR):  # every completion has an answer: none abstains
        assert math.isfinite(float(metrics[f"train/reward/{cue}"])), cue
