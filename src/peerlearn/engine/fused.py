"""A fused cohort: K members of one architecture evaluated as one batched model.

Every step the members' own parameters and buffers are stacked along a new leading axis
(``torch.stack``, differentiable), and one functional copy of the architecture is mapped over that
axis with ``torch.func.vmap``:

    z[k] = f(x; θ_k, β_k)  for k = 1..K   →   logits [K, B, C]

Because the stack is differentiable, the backward pass puts each member's gradient in its own
parameters, so each member keeps its own optimizer, schedule and checkpoint entry: the optimizer
steps are exactly those of the loop. BatchNorm in training mode updates the stacked running
statistics in place under ``vmap``; they are copied back into each member's buffers after the
forward, so evaluation and checkpoints see what the loop would have produced.

Randomness inside the forward (dropout) would draw one stream for all members instead of one per
member, so models with active dropout are refused.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from peerlearn.errors import ConfigError


class _WithFeatures(nn.Module):
    """Calls ``forward_with_features`` of the wrapped model (a vmap target must be ``forward``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):
        return self.inner.forward_with_features(x)


def check_fusable(models: list[nn.Module], names: list[str]) -> None:
    """Raise ConfigError unless the models share parameter/buffer names and shapes and draw no randomness."""
    reference = {k: (v.shape, v.dtype) for k, v in models[0].state_dict().items()}
    for name, model in zip(names[1:], models[1:]):
        other = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
        if other != reference:
            raise ConfigError(f"Invalid config: key 'engine.fused' is true, but members {names[0]!r} and {name!r} "
                              "have different parameter shapes; a fused cohort needs one architecture.")
    for name, model in zip(names, models):
        dropout = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        if dropout:
            raise ConfigError(f"Invalid config: key 'engine.fused' is true, but member {name!r} uses dropout "
                              f"(p={dropout[0].p}); a fused forward cannot draw one random stream per member. "
                              "Set the dropout model_args to 0 or engine.fused=false.")


class FusedCohort:
    """Callable ``fused(x) -> (logits [K, B, C], features [K, B, D] or None)`` over live member models."""

    kind = "vmap"

    def __init__(self, models: list[nn.Module], names: list[str], with_features: bool = False):
        check_fusable(models, names)
        self.models = models
        self.with_features = with_features
        template = copy.deepcopy(models[0]).to("meta")
        self.template: nn.Module = _WithFeatures(template) if with_features else template
        self.prefix = "inner." if with_features else ""
        self.param_names = [n for n, _ in models[0].named_parameters()]
        self.buffer_names = [n for n, _ in models[0].named_buffers()]
        self._batched = vmap(self._call, in_dims=(0, 0, None))

    def _call(self, params: dict, buffers: dict, x: torch.Tensor):
        return functional_call(self.template, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        own_params = [dict(m.named_parameters()) for m in self.models]
        own_buffers = [dict(m.named_buffers()) for m in self.models]
        params = {self.prefix + n: torch.stack([p[n] for p in own_params]) for n in self.param_names}
        buffers = {self.prefix + n: torch.stack([b[n] for b in own_buffers]) for n in self.buffer_names}
        self.template.train(self.models[0].training)
        out = self._batched(params, buffers, x)
        if self.models[0].training:
            with torch.no_grad():  # BatchNorm updated the stacked running statistics in place
                for name in self.buffer_names:
                    stacked = buffers[self.prefix + name]
                    for k, own in enumerate(own_buffers):
                        own[name].copy_(stacked[k])
        if self.with_features:
            logits, features = out
            return logits, features
        return out, None
