"""Per-class logit biases added at prediction time, and the validation search that picks them.

Hinton et al. (2015, §3) distil a student from a transfer set with every "3" removed. The student
still ranks 3s well but under-predicts them; adding a constant b to the logit of class 3 at test time,
z'_3 = z_3 + b, recovers most of them. Here the bias is a forward hook on the student that acts only in
eval mode, so training is unchanged, every evaluation (per epoch, final, ``load_run``) applies it, and
the saved weights stay those of the plain model.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

_BIAS = "_peerlearn_class_bias"
_HOOK = "_peerlearn_class_bias_hook"


def _add_bias(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    bias = getattr(module, _BIAS, None)
    if bias is None or module.training:
        return output
    return output + bias.to(device=output.device, dtype=output.dtype)


def bias_vector(biases: Mapping[int, float], num_classes: int, device=None) -> torch.Tensor:
    """The vector b with b_c = biases[c] (0 elsewhere)."""
    vector = torch.zeros(num_classes, device=device)
    for cls, value in biases.items():
        vector[int(cls)] = float(value)
    return vector


def set_class_bias(model: nn.Module, bias: Optional[torch.Tensor]) -> None:
    """From now on, ``model`` in eval mode returns z + ``bias`` (None removes the bias)."""
    if getattr(model, _HOOK, None) is None:
        object.__setattr__(model, _HOOK, model.register_forward_hook(_add_bias))
    object.__setattr__(model, _BIAS, None if bias is None else bias.detach().clone())


def get_class_bias(model: nn.Module) -> Optional[torch.Tensor]:
    return getattr(model, _BIAS, None)


def accuracy_with_bias(logits: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor) -> float:
    return float(((logits + bias).argmax(1) == labels).float().mean())


def find_class_bias(logits: torch.Tensor, labels: torch.Tensor, classes: Iterable[int],
                    grid: Sequence[float], start: Optional[Mapping[int, float]] = None) -> dict:
    """Grid search of the biases of ``classes`` that maximise accuracy of argmax(z + b) on (logits, labels).

    Give it *validation* logits (raw, without bias), never test ones. Several classes are searched one
    after another (coordinate-wise, each with the biases already found applied). Among equally accurate
    values the one closest to 0 wins. Returns ``{"bias": {c: b_c}, "accuracy": acc, "curves": {c: [[b,
    acc], ...]}}``.
    """
    num_classes = logits.shape[1]
    found = {int(c): float(v) for c, v in (start or {}).items()}
    curves = {}
    candidates = sorted(grid, key=lambda b: (abs(b), b))
    for cls in classes:
        cls = int(cls)
        best_value, best_accuracy, curve = 0.0, -1.0, []
        for value in candidates:
            trial = bias_vector({**found, cls: value}, num_classes, logits.device)
            accuracy = accuracy_with_bias(logits, labels, trial)
            curve.append([float(value), accuracy])
            if accuracy > best_accuracy:
                best_value, best_accuracy = float(value), accuracy
        found[cls] = best_value
        curves[cls] = sorted(curve)
    final = accuracy_with_bias(logits, labels, bias_vector(found, num_classes, logits.device))
    return {"bias": found, "accuracy": final, "curves": curves}


def raw_logits(model: nn.Module, stream) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits of ``model`` on every item of ``stream`` *without* its class bias, and the labels."""
    previous = get_class_bias(model)
    was_training = model.training
    object.__setattr__(model, _BIAS, None)
    model.eval()
    try:
        with torch.inference_mode():
            pairs = [(model(batch.x).float().cpu(), batch.y.cpu()) for _, batch in stream.epoch(0)]
    finally:
        model.train(was_training)
        object.__setattr__(model, _BIAS, previous)
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


def fit_class_bias(model: nn.Module, stream, classes: Iterable[int], grid: Sequence[float],
                   start: Optional[Mapping[int, float]] = None) -> dict:
    """Predict ``stream`` (the validation split) with ``model`` without any bias, then ``find_class_bias``.

    Callable from Python on any trained model, e.g. ``fit_class_bias(run.cohort["student"].model,
    run.recipe.eval_streams["val"], [3], [0.5 * i for i in range(21)])``. The model's own bias is left
    as it was: install the result with ``set_class_bias(model, bias_vector(result["bias"], C))``.
    """
    logits, labels = raw_logits(model, stream)
    return find_class_bias(logits, labels, classes, grid, start)
