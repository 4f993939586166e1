"""The vision tower's pre-training: it learns per-token targets, trains only the tower, and its
folder loads as a model whose language model is unchanged."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from srmcr.policy import resolve_model
from toyworld.vision_pretrain import VisionPretrain

SIDE = 56  # 2 x 2 merged tokens with tiny:tiny


def images_and_targets():
    """Left half red or blue: channel 0 is "this token is red" (tokens 0 and 2 are the left)."""
    images, targets = [], []
    for colour in ((220, 30, 30), (40, 80, 220)):
        image = Image.new("RGB", (SIDE, SIDE), (240, 240, 240))
        image.paste(colour, (0, 0, SIDE // 2, SIDE))
        images.append(image)
        red = float(colour[0] > 200)
        targets.append(torch.tensor([[red], [0.0], [red], [0.0]]))
    return SimpleNamespace(images=images, targets=torch.cat(targets))


def test_steps_lower_the_loss_and_change_only_the_vision_tower(tmp_path):
    torch.manual_seed(0)
    module = VisionPretrain("tiny:tiny", channels=1, max_pixels=SIDE * SIDE, lr=1e-2)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    batch = images_and_targets()
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.visual.") for k in changed)
    saved = module.save(tmp_path / "model")
    reloaded = type(module)(str(saved), channels=1, max_pixels=SIDE * SIDE)
    for key, value in module.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[key], value), key


def test_targets_for_another_number_of_tokens_are_refused():
    module = VisionPretrain(resolve_model("tiny:tiny"), channels=1, max_pixels=SIDE * SIDE)
    batch = images_and_targets()
    batch.targets = batch.targets[:-1]
    with pytest.raises(ValueError, match="8 image tokens but targets for 7"):
        module.training_step(batch, 0)


def test_alignment_pulls_the_tokens_that_show_a_word_toward_its_embedding():
    torch.manual_seed(0)
    module = VisionPretrain("tiny:tiny", channels=1, max_pixels=SIDE * SIDE, lr=1e-2,
                            words=["red"], word_weights=[2.0])
    table = module.model.get_input_embeddings().weight
    ids = module.processor.tokenizer(" red", add_special_tokens=False)["input_ids"]
    assert torch.allclose(module.word_embeddings[0], 2.0 * table[ids].mean(0))
    batch = images_and_targets()
    red = batch.targets[:, 0] == 1  # the red image's left tokens

    def distance() -> float:
        with torch.no_grad():
            return (module.features(batch.images)[red] - module.word_embeddings[0]).norm().item()

    before = distance()
    optimizer = module.configure_optimizers()
    for _ in range(30):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert distance() < 0.5 * before


def test_one_word_per_channel():
    with pytest.raises(ValueError, match="2 words and 2 weights for 1 channels"):
        VisionPretrain("tiny:tiny", channels=1, max_pixels=SIDE * SIDE, words=["red", "blue"])
