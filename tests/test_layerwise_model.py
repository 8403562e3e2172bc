"""The layerwise CNN: invertible downsampling, block and head structure, the heads' ensemble."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peerlearn.models import create_model
from peerlearn.models.layerwise import LayerwiseCNN, depth_to_space, space_to_depth, weighted_ensemble


def test_space_to_depth_is_exactly_invertible_and_a_permutation():
    x = torch.randn(3, 5, 6, 8)
    y = space_to_depth(x)
    assert y.shape == (3, 20, 3, 4)
    assert torch.equal(depth_to_space(y), x)
    # no value is lost or changed: the same multiset of numbers
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)
    # output channel 4c + 2a + b at (i, j) is input channel c at (2i + a, 2j + b)
    for c, a, b, i, j in [(0, 0, 0, 0, 0), (2, 1, 0, 1, 3), (4, 1, 1, 2, 2), (3, 0, 1, 2, 0)]:
        assert y[1, 4 * c + 2 * a + b, i, j] == x[1, c, 2 * i + a, 2 * j + b]
    assert torch.equal(space_to_depth(depth_to_space(y)), y)


def test_space_to_depth_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        space_to_depth(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match="downsample"):
        create_model("layerwise_cnn", 10, in_channels=1, image_size=7, downsample_at=[0])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_blocks_heads_and_shapes_follow_the_paper(k):
    model = create_model("layerwise_cnn", 10, in_channels=3, image_size=16, blocks=4, width=8, k=k,
                         downsample_at=[0, 2])
    assert isinstance(model, LayerwiseCNN)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == (k > 1)  # BN only when k > 1
    # downsampling at the input (width stays M) and at block 2 (width doubles)
    assert model.widths == [8, 8, 16, 16]
    assert [type(b[0]).__name__ for b in model.blocks] == ["SpaceToDepth", "Sequential", "SpaceToDepth", "Sequential"]
    assert model.blocks[0][1][0].in_channels == 12 and model.blocks[2][1][0].in_channels == 32
    for j, head in enumerate(model.heads):
        convs = [m for m in head.body.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == k - 1  # k − 1 extra conv layers
        assert isinstance(head.body[-2], nn.AdaptiveAvgPool2d) and head.body[-2].output_size == 2
        assert head.linear.in_features == model.widths[j] * 4  # averaged to 2×2
    x = torch.randn(2, 3, 16, 16)
    outputs = model.block_outputs(x)
    assert [tuple(o.shape[1:]) for o in outputs] == [(8, 8, 8), (8, 8, 8), (16, 4, 4), (16, 4, 4)]
    assert (outputs[1] >= 0).all()  # ReLU
    model.eval()
    with torch.no_grad():
        logits = model.head_logits(x)
        assert torch.allclose(model(x), logits[-1], atol=1e-6)  # final model = blocks + last head
        model.depth = 2
        assert torch.allclose(model(x), logits[1], atol=1e-6)


def test_ensemble_weights_deeper_heads_by_powers_of_two():
    z = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[7.0, 0.0]])]
    # (1·z0 + 2·z1 + 4·z2) / 7
    assert torch.allclose(weighted_ensemble(z), torch.tensor([[29.0 / 7, 6.0 / 7]]))
    model = create_model("layerwise_cnn", 3, in_channels=1, image_size=8, blocks=3, width=4)
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        logits = model.head_logits(x)
        expected = (logits[0] + 2 * logits[1] + 4 * logits[2]) / 7
        assert torch.allclose(model.ensemble_logits(x), expected, atol=1e-6)


def test_freeze_below_keeps_the_prefix_in_eval_mode_without_gradients():
    model = create_model("layerwise_cnn", 3, in_channels=1, image_size=8, blocks=3, width=4, k=2)
    model.depth = 3
    model.freeze_below(2)
    model.train()
    assert not model.blocks[0].training and not model.blocks[1].training and model.blocks[2].training
    assert model.heads[2].training and not model.heads[0].training
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.2", "heads.2"}
    model.depth = 2  # stage 1 of 3: the unused block 2 is frozen too, not only the prefix
    model.freeze_below(1)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"blocks.1", "heads.1"}
