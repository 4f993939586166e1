"""CompletionTables: the markdown by hand, then tables, images and histograms in a real run."""

from dataclasses import replace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.completions import CompletionTables, completion_markdown, thumbnail
from datamodules.image_question import ImageQuestionDataModule
from srmcr.errors import ConfigError
from srmcr.module import SRMCRModule, StepRecord
from srmcr.policy import LoraArgs, PolicyArgs
from srmcr.reward import RewardOutput, SelfReward
from srmcr.rollout import SamplingArgs
from tests.cues.fakes import make_rollout


def _record() -> StepRecord:
    texts = ["<think>Step 1: a | b</think><answer>3</answer>", "plain\ntext",
             "x" * 50, "<answer>4</answer>"]
    rollout = make_rollout(["How many?", "How many?", "Which colour?", "Which colour?"], texts,
                           group_size=2)
    rollout = replace(rollout, ids=["q0", "q0", "q1", "q1"], temperature=0.85)
    scores = torch.tensor([[0.5, float("nan")], [0.25, 1.0], [0.0, 0.0], [1.0, 0.5]])
    reward = RewardOutput(rewards=torch.tensor([1.0, -1.0, 0.0, 0.0]), scores=scores,
                          raw=scores.nanmean(-1), stats={"weight/a": 0.6, "weight/b": 0.4})
    return StepRecord(rollout, reward, advantages=torch.tensor([0.7071, -0.7071, 0.0, 0.0]))


def test_markdown_shows_groups_scores_reward_advantage_and_temperature():
    md = completion_markdown(_record(), ["a", "b"], global_step=7, groups=1, max_chars=20)
    assert md.startswith("**step 7** · temperature 0.850 · mean raw reward 0.469 · "
                         "weights: a 0.60, b 0.40")
    assert "### group 0 · q0" in md and "q1" not in md  # only the first group
    assert "| # | completion | a | b | well formed | reward | advantage |" in md
    # Tags are shown, not swallowed as HTML; a pipe cannot break the table; NaN is a dash.
    assert ("| 0 | &lt;think&gt;Step 1: a &#124; b … | 0.500 | – | yes | 1.000 | 0.707 |"
            in md)
    assert "| 1 | plain<br>text | 0.250 | 1.000 | no | -1.000 | -0.707 |" in md


def test_thumbnail_keeps_the_aspect_ratio():
    assert thumbnail(Image.new("RGB", (300, 150)), 100).shape == (50, 100, 3)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"every_n_steps": 0}, r"^CompletionTables every_n_steps=0: set it to 1 or more$"),
    ({"groups": 0}, r"^CompletionTables groups=0: set it to 1 or more$"),
    ({"max_chars": 0}, r"^CompletionTables max_chars=0: set it to 1 or more$"),
    ({"thumbnail_size": 4}, r"^CompletionTables thumbnail_size=4: set it to 8 \(pixels\) or more"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CompletionTables(**kwargs)


@pytest.mark.slow
def test_run_writes_tables_images_and_histograms(tmp_path):
    module = SRMCRModule(
        policy=PolicyArgs(model="tiny:tiny", max_pixels=56 * 56, lora=LoraArgs(r=4, alpha=8)),
        sampling=SamplingArgs(group_size=2, max_new_tokens=6),
        reward=SelfReward(cues=["lexical_fidelity", "visual_grounding"]))
    data = ImageQuestionDataModule(train="shapes:train?n=8&size=56", batch_size=2,
                                   min_pixels=28 * 28, max_pixels=56 * 56)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=logger, log_every_n_steps=1,
                        callbacks=[CompletionTables(every_n_steps=2)],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0, "images": 0,
                                                             "histograms": 0})
    events.Reload()
    tags = events.Tags()
    tables = events.Tensors("train/completions/text_summary")
    assert [e.step for e in tables] == [1, 3]  # batches 0 and 2
    text = tables[0].tensor_proto.string_val[0].decode()
    assert "temperature" in text and "| lexical_fidelity | visual_grounding |" in text
    assert {"train/completions/image_0", "train/completions/image_1"} <= set(tags["images"])
    assert {"train/hist/reward", "train/hist/reward_raw", "train/hist/advantage"} <= set(
        tags["histograms"])
    assert "train/frac_zero_std_groups" in tags["scalars"]
