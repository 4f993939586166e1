"""StepCheckpoint: periodic checkpoints of a manually optimized module, without Lightning's
pre-update advice, holding the weights after the step they name."""

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.checkpoints import PRE_STEP_ADVICE, StepCheckpoint


class ManualModel(BoringModel):
    """Steps its optimizer inside ``training_step``, as SRMCRModule does; records its weights after
    every step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.after: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.step(batch)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return {"loss": loss}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.after[self.global_step] = self.layer.weight.detach().clone()


def _fit(tmp_path, checkpoint: ModelCheckpoint) -> tuple[ManualModel, list[str]]:
    model = ManualModel()
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checkpoint],
                        default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    return model, [str(w.message) for w in caught]


@pytest.mark.parametrize("kind", [ModelCheckpoint, StepCheckpoint])
def test_periodic_saves_hold_the_weights_after_their_step(tmp_path, kind):
    model, messages = _fit(tmp_path, kind(dirpath=tmp_path, every_n_train_steps=2,
                                          save_top_k=-1, monitor="step", mode="max"))
    advice = [m for m in messages if m.startswith(PRE_STEP_ADVICE)]
    # Lightning gives its advice at each of the two saves; StepCheckpoint declines it.
    assert len(advice) == (2 if kind is ModelCheckpoint else 0)
    for step in (2, 4):
        saved = torch.load(tmp_path / f"epoch=0-step={step}.ckpt", weights_only=True)
        assert saved["global_step"] == step
        assert torch.equal(saved["state_dict"]["layer.weight"], model.after[step])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"every_n_train_steps": -1}, r"^StepCheckpoint every_n_train_steps=-1: set it to 1 or more"),
    ({"save_top_k": -2}, r"^StepCheckpoint save_top_k=-2: set it to -1 \(keep all\), 0 or more$"),
])
def test_invalid_arguments(kwargs, match):
    from srmcr.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        StepCheckpoint(**kwargs)
