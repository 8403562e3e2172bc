"""Max-norm weight constraint: hand values, and applied after every optimizer step of a member."""

import pytest
import torch
from torch import nn

import peerlearn
from peerlearn.engine.constraints import apply_max_norm


def test_max_norm_scales_only_rows_that_are_too_long():
    layer = nn.Linear(2, 3, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0]]))
        layer.bias.fill_(10.0)
    apply_max_norm(layer, 1.0)
    # ‖(3, 4)‖ = 5 → (0.6, 0.8); ‖(0.3, 0.4)‖ = 0.5 stays; ‖(0, −2)‖ = 2 → (0, −1); biases untouched
    torch.testing.assert_close(layer.weight, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, -1.0]]))
    assert torch.all(layer.bias == 10.0)


def test_max_norm_on_convolutions_is_per_output_filter():
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        conv.weight.mul_(100.0)
    apply_max_norm(conv, 2.0)
    norms = conv.weight.reshape(4, -1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), 2.0))


def test_member_max_norm_holds_after_training(tiny, tmp_path):
    member = {"name": "a", "model": "mlp", "model_args": {"widths": [32], "dropout": 0.2, "input_dropout": 0.2},
              "max_norm": 0.5}
    config = tiny(recipe="independent", members=[member], optim={"name": "sgd", "lr": 0.2, "momentum": 0.9})
    result = peerlearn.train(config, out=tmp_path)
    model = result.cohort["a"].model
    row_norms = torch.cat([m.weight.detach().norm(dim=1) for m in model.modules() if isinstance(m, nn.Linear)])
    assert float(row_norms.max()) <= 0.5 + 1e-5
    assert float(row_norms.max()) == pytest.approx(0.5, abs=1e-4)  # the constraint was active
    assert result.member_accuracy()["a"] > 0.7
    unconstrained = peerlearn.train(tiny(recipe="independent", members=[{**member, "max_norm": None}],
                                         optim={"name": "sgd", "lr": 0.2, "momentum": 0.9}), out=tmp_path)
    free = torch.cat([m.weight.detach().norm(dim=1) for m in unconstrained.cohort["a"].model.modules()
                      if isinstance(m, nn.Linear)])
    assert float(free.max()) > 0.5


def test_mlp_drops_inputs_and_hidden_units_in_training_only():
    from peerlearn.models import create_model

    model = create_model("mlp", num_classes=3, in_features=4, widths=[5], dropout=0.5, input_dropout=0.2)
    dropouts = [m.p for m in model.body if isinstance(m, nn.Dropout)]
    assert dropouts == [0.2, 0.5]
    assert isinstance(model.body[1], nn.Dropout)  # right after Flatten: on the inputs
    x = torch.randn(8, 4)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
