"""Exact resume: 2N steps in one run equal N steps + checkpoint + resume + N steps."""

import lightning as L
import torch

from callbacks.cooling import ConfidenceCooling
from datamodules.image_question import ImageQuestionDataModule
from tests.test_module import _module


class Record(L.Callback):
    """Keeps each step's logged raw reward and temperature."""

    def __init__(self):
        self.rewards: list[float] = []
        self.temperatures: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rewards.append(float(trainer.callback_metrics["train/reward_raw"]))
        self.temperatures.append(pl_module.temperature)


def _run(tmp_path, steps, ckpt_path=None, save=None):
    L.seed_everything(0)
    module = _module(beta=0.04)
    record = Record()
    data = ImageQuestionDataModule(train="shapes:train?n=32&size=56", batch_size=2,
                                   shuffle_buffer=8, min_pixels=28 * 28, max_pixels=56 * 56)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ConfidenceCooling(cooling_steps=4, auto_steps=2), record])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if save:
        trainer.save_checkpoint(save)
    lora = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    return lora, record


def test_resumed_run_matches_the_uninterrupted_one(tmp_path):
    full, full_record = _run(tmp_path / "a", 4)
    ckpt = tmp_path / "half.ckpt"
    _, first = _run(tmp_path / "b", 2, save=ckpt)
    resumed, second = _run(tmp_path / "b", 4, ckpt_path=ckpt)
    assert first.rewards + second.rewards == full_record.rewards
    assert first.temperatures + second.temperatures == full_record.temperatures
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6)
