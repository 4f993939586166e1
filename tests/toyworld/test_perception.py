"""Per-token targets of the vision tower's pre-training, computed by hand for placed shapes."""

import pytest
import torch

from toyworld.perception import CHANNELS, NAMES, perception_loader, token_targets
from toyworld.scene import Scene, Shape
from toyworld.sources import ShapesSource

N = len(NAMES)


def on(targets: torch.Tensor, token: int) -> set[str]:
    """Names of the channels set for one token: "cover:red", "centre:square", ..."""
    return {f"{'cover' if c < N else 'centre'}:{NAMES[c % N]}"
            for c in torch.nonzero(targets[token]).flatten().tolist()}


def test_a_shape_inside_one_block_sets_its_colour_and_kind_there_only():
    # 112 px = 4 x 4 blocks of 28 px; the square spans pixels 2.8..25.2: block (0, 0) alone.
    square = Shape("square", "red", cx=0.125, cy=0.125, size=0.2)
    targets = token_targets(Scene((square,)), 112)
    assert targets.shape == (16, CHANNELS)
    assert on(targets, 0) == {"cover:red", "cover:square", "centre:red", "centre:square"}
    assert targets[1:].sum() == 0


def test_a_shape_across_two_blocks_covers_both_and_centres_in_the_one_its_centre_is_in():
    # Centre x = 0.5 is the border of columns 1 and 2 (int(0.5 * 4) = 2); row int(0.375 * 4) = 1.
    circle = Shape("circle", "blue", cx=0.5, cy=0.375, size=0.2)
    targets = token_targets(Scene((circle,)), 112)
    assert on(targets, 1 * 4 + 1) == {"cover:blue", "cover:circle"}
    assert on(targets, 1 * 4 + 2) == {"cover:blue", "cover:circle", "centre:blue",
                                      "centre:circle"}
    assert targets.sum() == 6


def test_two_shapes_in_different_blocks_keep_their_own_attributes():
    scene = Scene((Shape("triangle", "green", 0.125, 0.875, 0.2),
                   Shape("circle", "yellow", 0.875, 0.125, 0.2)))
    targets = token_targets(scene, 112)
    assert on(targets, 12) == {"cover:green", "cover:triangle", "centre:green",
                               "centre:triangle"}  # bottom left: row 3, column 0
    assert on(targets, 3) == {"cover:yellow", "cover:circle", "centre:yellow", "centre:circle"}


def test_image_side_must_be_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 28"):
        token_targets(Scene(()), 100)


def test_loader_batches_images_with_their_tokens_targets_in_order():
    batch = next(iter(perception_loader(ShapesSource("perception", n=3, size=56), 3)))
    assert len(batch.images) == 3 and batch.targets.shape == (3 * 4, CHANNELS)
    again = next(iter(perception_loader(ShapesSource("perception", n=3, size=56), 3)))
    assert torch.equal(batch.targets, again.targets)  # a pure function of the source
    assert batch.targets[:, N:].sum() >= 3  # every scene has a shape, so a centre
