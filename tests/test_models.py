"""Every registered model keeps the PeerModel contract; sizes match the papers; bad names fail clearly."""

from __future__ import annotations

import pytest
import torch

from peerlearn.models import PeerModel, available_models, create_model

NUM_CLASSES = 7

# Small options so the forward tests stay fast on a CPU; a model not listed is built with defaults.
FAST_OPTIONS: dict[str, dict] = {
    "mlp": {"in_features": 48, "widths": (16, 16)},
    "cifar_resnet": {"depth": 8},
    "wrn": {"depth": 10, "widen_factor": 1},
    "inception_v1": {"width_mult": 0.25},
    "mobilenet": {"width_mult": 0.5},
    "small_cnn": {"width": 8},
}
# Extra input shapes (channels, size) beyond 3x32x32, for the convnets that support small images.
EXTRA_SHAPES = {
    "small_cnn": [(1, 28), (3, 8)],
    "resnet20": [(1, 28), (3, 8)],
    "mobilenet": [(1, 28), (3, 8)],
    "wrn": [(1, 28)],
    "inception_v1": [(1, 28), (3, 8)],
}


def cases() -> list[tuple[str, int, int]]:
    out = []
    for name in available_models():
        out.append((name, 3, 32))
        out += [(name, c, s) for c, s in EXTRA_SHAPES.get(name, [])]
    return out


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, in_channels: int, size: int) -> tuple[PeerModel, torch.Tensor]:
    options = dict(FAST_OPTIONS.get(name, {}))
    if name == "mlp":
        in_features = options.pop("in_features")
        model = create_model(name, NUM_CLASSES, in_features=in_features, **options)
        return model, torch.randn(2, in_features)
    model = create_model(name, NUM_CLASSES, in_channels=in_channels, image_size=size, **options)
    return model, torch.randn(2, in_channels, size, size)


def test_expected_models_are_registered():
    expected = {"mlp", "small_cnn", "cifar_resnet", "resnet20", "resnet32", "resnet56", "mobilenet",
                "wrn", "wrn_28_10", "wrn_16_4", "inception_v1"}
    assert expected <= set(available_models())


@pytest.mark.parametrize("name,in_channels,size", cases())
def test_model_contract(name: str, in_channels: int, size: int):
    torch.manual_seed(0)
    model, x = build(name, in_channels, size)
    assert isinstance(model, PeerModel)
    model.train()
    assert model(x).shape == (2, NUM_CLASSES)  # a training-mode pass works too (BN with batch 2)

    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        logits2, feats2 = model.forward_with_features(x)
        assert logits.shape == (2, NUM_CLASSES)
        assert feats.shape == (2, model.feature_dim)
        assert torch.isfinite(logits).all()
        assert torch.allclose(logits, logits2, atol=1e-5)
        assert torch.allclose(feats, feats2, atol=1e-5)
        assert torch.allclose(model.classifier(feats), logits, atol=1e-5)

        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        assert model.features(x).shape == (2, model.feature_dim)


@pytest.mark.parametrize("name,reference,num_classes", [
    ("resnet32", 0.46e6, 10),      # He et al. 2016, table 6
    ("resnet20", 0.27e6, 10),
    ("resnet56", 0.85e6, 10),
    ("wrn_28_10", 36.5e6, 100),    # Zagoruyko & Komodakis 2016, table 4
    ("wrn_16_4", 2.7e6, 100),
])
def test_parameter_counts_match_papers(name: str, reference: float, num_classes: int):
    with torch.device("meta"):  # no memory or init cost, even for WRN-28-10
        model = create_model(name, num_classes)
    assert abs(n_params(model) - reference) / reference < 0.05, n_params(model)


def test_generic_builders_match_named_ones():
    with torch.device("meta"):
        assert n_params(create_model("cifar_resnet", 10, depth=32)) == n_params(create_model("resnet32", 10))
        assert n_params(create_model("wrn", 10, depth=16, widen_factor=4)) == n_params(create_model("wrn_16_4", 10))


def test_width_mult_shrinks_networks():
    with torch.device("meta"):
        for name in ("mobilenet", "inception_v1"):
            full, small = create_model(name, 10), create_model(name, 10, width_mult=0.25)
            assert n_params(small) < n_params(full) / 8
            assert small.feature_dim == full.feature_dim // 4


def test_unknown_model_lists_allowed_names():
    with pytest.raises(ValueError, match="unknown model") as info:
        create_model("resnet33", 10)
    for name in available_models():
        assert name in str(info.value)


def test_unknown_option_lists_allowed_options():
    with pytest.raises(ValueError, match="widen") as info:
        create_model("wrn", 10, widen=4)
    for option in ("depth", "widen_factor", "dropout"):
        assert option in str(info.value)
    with pytest.raises(ValueError, match="width_mult"):
        create_model("inception_v1", 10, width=0.5)


@pytest.mark.parametrize("depth", [27, 8, 30])
def test_wrn_bad_depth(depth: int):
    with pytest.raises(ValueError, match=r"6n\+4"):
        create_model("wrn", 10, depth=depth, widen_factor=1)


@pytest.mark.parametrize("depth", [31, 4])
def test_cifar_resnet_bad_depth(depth: int):
    with pytest.raises(ValueError, match=r"6n\+2"):
        create_model("cifar_resnet", 10, depth=depth)
