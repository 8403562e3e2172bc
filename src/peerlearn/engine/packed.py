"""A packed cohort: K members of one architecture run as one network whose layers are grouped by member.

The idea of Packed-Ensembles (Laurent et al., ICLR 2023): K networks of one architecture are one wider
network whose channels come in K blocks, block k belonging to member k, and whose layers never mix
blocks. An activation of the packed network is ``[B, K·C, ...]`` (member k's channels are
``k·C .. (k+1)·C − 1``), and each layer acts on it so that block k is exactly member k's layer applied
to member k's activation:

* ``Conv2d`` (C_in → C_out, g groups) → one convolution with weight ``cat_k W_k`` ([K·C_out, C_in/g, kh, kw])
  and ``K·g`` groups; the layer that reads the raw input takes it once (a dense convolution C_in → K·C_out,
  groups = 1), which is the same arithmetic as K convolutions of the shared batch;
* ``Linear`` (D → O) → a batched matmul ``y[k] = x[k] W_kᵀ + b_k`` on the ``[K, B, D]`` view of ``[B, K·D]``;
* ``BatchNorm`` → one BatchNorm over K·C channels: per-channel statistics are per member by construction
  (weights, biases and running statistics are concatenated; the updated statistics are written back);
* dropout → each member's own dropout module applied to its block, in member order, so every member draws
  its own mask (with one dropout layer per network, the very masks of the loop, which draws them in the
  same order);
* activations, pooling and ``Flatten`` act per channel (``Flatten`` keeps the blocks contiguous: channel-major).

The packed network holds **no weights of its own**: every call concatenates the members' live parameters
(``torch.cat`` / ``torch.stack``, differentiable), so the backward pass leaves each member's gradient in its
own ``.grad``; each member keeps its own optimizer, schedule, checkpoint entry and state-dict keys, and
evaluation and export still see the member networks.

Which networks can be packed is decided from their structure (``pack_network``): every leaf module is one
of the layers above and every module with children either is an ``nn.Sequential`` or declares
``packable = True`` in its own class body (its ``forward`` only composes its submodules and adds or multiplies their outputs
elementwise: the zoo's ``small_cnn``, CIFAR ResNets, WRNs and MLPs). Anything else (channel concatenation,
reshapes across channels, forward hooks, custom layers) is refused with the reason, and the fused executor
falls back to ``vmap`` (``engine.fused``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Parameter-free modules that act on each channel (or element) on its own: they run on packed activations as
# they are. Flatten is checked separately (it must keep dim 0 and flatten the rest, channel-major).
PER_CHANNEL = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)


class NotPackable(Exception):
    """The members cannot be packed; the message says which module stops it."""


class _SharedInput:
    """The cohort's input of the current call: ``raw`` [B, C, ...] and ``repeated`` [B, K·C, ...].

    A layer whose input *is* ``repeated``, unmodified (the first layer), reads ``raw`` once instead."""

    raw: Optional[torch.Tensor] = None
    repeated: Optional[torch.Tensor] = None
    version: int = 0  # ``repeated._version`` when it was made: an in-place change (a ReLU) bumps it

    def is_input(self, x: torch.Tensor) -> bool:
        return x is self.repeated and x._version == self.version


class _PackedLayer(nn.Module):
    """Base of the packed layers: the K member modules are kept in a plain tuple (not registered as
    submodules), so the packed network owns no parameters and ``.to`` / ``.state_dict`` never touch it."""

    def __init__(self, members: list[nn.Module], shared: _SharedInput):
        super().__init__()
        object.__setattr__(self, "members", tuple(members))
        object.__setattr__(self, "shared", shared)

    @property
    def k(self) -> int:
        return len(self.members)

    def extra_repr(self) -> str:
        return f"K={self.k}, {self.members[0]!r}"


def _cat(tensors: list[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    return None if tensors[0] is None else torch.cat(tensors)


class PackedConv2d(_PackedLayer):
    """K convolutions C_in → C_out (g groups) as one with K·g groups over [B, K·C_in, H, W] → [B, K·C_out, H', W']."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.members[0]
        weight = torch.cat([m.weight for m in self.members])
        bias = _cat([m.bias for m in self.members])
        if self.shared.is_input(x) and conv.groups == 1:  # the raw input, once: C_in → K·C_out
            return F.conv2d(self.shared.raw, weight, bias, conv.stride, conv.padding, conv.dilation, 1)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups * self.k)


class PackedLinear(_PackedLayer):
    """K linear maps D → O over [B, K·D] → [B, K·O]: ``y[k] = x[k] W_kᵀ + b_k`` as one batched matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = self.members[0]
        if self.shared.is_input(x):  # the raw input, once: D → K·O
            return F.linear(self.shared.raw, torch.cat([m.weight for m in self.members]),
                            _cat([m.bias for m in self.members]))
        if x.dim() != 2:
            raise RuntimeError(f"a packed Linear takes [batch, K·features], got shape {tuple(x.shape)}")
        batch = x.shape[0]
        blocks = x.view(batch, self.k, linear.in_features).transpose(0, 1)  # [K, B, D]
        weight_t = torch.stack([m.weight for m in self.members]).transpose(1, 2)  # [K, D, O]
        if linear.bias is None:
            out = torch.bmm(blocks, weight_t)
        else:
            out = torch.baddbmm(torch.stack([m.bias for m in self.members]).unsqueeze(1), blocks, weight_t)
        return out.transpose(0, 1).reshape(batch, self.k * linear.out_features)


class PackedBatchNorm(_PackedLayer):
    """K BatchNorms over C channels as one over K·C channels (the statistics of a channel are its member's).

    In training mode with running statistics, each member's ``num_batches_tracked`` is counted and its
    running mean and variance are replaced by its block of the updated concatenation, exactly as its own
    BatchNorm would have updated them:  r ← (1 − m) r + m · batch statistic  (m = 1 / count when momentum is None).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.members[0]
        tracking = bn.track_running_stats and bn.running_mean is not None
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and tracking:
            with torch.no_grad():
                for member in self.members:
                    member.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        use_batch_stats = bn.training or not tracking
        mean = _cat([m.running_mean for m in self.members]) if tracking else None
        var = _cat([m.running_var for m in self.members]) if tracking else None
        out = F.batch_norm(x, mean, var, _cat([m.weight for m in self.members]),
                           _cat([m.bias for m in self.members]), use_batch_stats, momentum, bn.eps)
        if bn.training and tracking:  # F.batch_norm updated the concatenations in place: write each block back
            with torch.no_grad():
                size = bn.num_features
                for k, member in enumerate(self.members):
                    member.running_mean.copy_(mean[k * size:(k + 1) * size])
                    member.running_var.copy_(var[k * size:(k + 1) * size])
        return out


class PackedDropout(_PackedLayer):
    """Each member's dropout on its own block, in member order: K independent masks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.members[0].training or self.members[0].p == 0:
            return x
        return torch.cat([member(block) for member, block in zip(self.members, x.chunk(self.k, dim=1))], dim=1)


def _signature(module: nn.Module) -> tuple:
    """What two modules must share to be packed together: type, settings, parameter and buffer shapes."""
    return (type(module), module.extra_repr(),
            tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters(recurse=False)),
            tuple((n, None if b is None else tuple(b.shape)) for n, b in module.named_buffers(recurse=False)),
            tuple(module._modules))


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _pack(modules: list[nn.Module], path: str, shared: _SharedInput) -> nn.Module:
    ref = modules[0]
    where = path or "the network"
    signature = _signature(ref)
    if any(_signature(m) != signature for m in modules[1:]):
        raise NotPackable(f"the members differ at {where}")
    if any(_has_hooks(m) for m in modules):
        raise NotPackable(f"{where} has forward or backward hooks")
    if type(ref) is nn.Conv2d:
        if ref.padding_mode != "zeros":
            raise NotPackable(f"{where} pads with {ref.padding_mode!r}")
        return PackedConv2d(modules, shared)
    if type(ref) is nn.Linear:
        return PackedLinear(modules, shared)
    if type(ref) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return PackedBatchNorm(modules, shared)
    if isinstance(ref, nn.modules.dropout._DropoutNd):
        return PackedDropout(modules, shared)
    if type(ref) is nn.Flatten:
        if ref.start_dim != 1 or ref.end_dim != -1:
            raise NotPackable(f"{where} flattens dimensions {ref.start_dim}..{ref.end_dim} (only 1..-1 keeps "
                              "the member blocks apart)")
        return ref
    if isinstance(ref, PER_CHANNEL) and not ref._modules:
        if any(True for _ in ref.parameters()) or any(True for _ in ref.buffers()):
            raise NotPackable(f"{where} ({type(ref).__name__}) has weights of its own")
        return ref
    if not ref._modules:
        raise NotPackable(f"{where} ({type(ref).__name__}) is a layer the packer does not know")
    if type(ref) is not nn.Sequential and not vars(type(ref)).get("packable", False):
        raise NotPackable(f"{where} ({type(ref).__name__}) does not declare a channel-wise forward "
                          "(packable = True)")
    if ref._parameters or any(b is not None for b in ref._buffers.values()):
        raise NotPackable(f"{where} ({type(ref).__name__}) holds weights outside its layers")
    clone = type(ref).__new__(type(ref))
    clone.__dict__ = dict(ref.__dict__)
    clone._parameters, clone._buffers = {}, {}
    clone._non_persistent_buffers_set = set()
    clone._forward_hooks, clone._forward_pre_hooks, clone._backward_hooks = {}, {}, {}
    clone._modules = {}
    for name, child in ref._modules.items():
        clone._modules[name] = None if child is None else _pack(
            [m._modules[name] for m in modules], f"{path}.{name}" if path else name, shared)
    return clone


def pack_network(models: list[nn.Module]) -> tuple[nn.Module, _SharedInput]:
    """The packed network of ``models`` (one architecture) and the input record its first layers read.

    Raises ``NotPackable`` (with the module that stops it) when the structure is not one the packer knows."""
    shared = _SharedInput()
    return _pack(list(models), "", shared), shared


def _unpack(packed: torch.Tensor, k: int) -> torch.Tensor:
    """[B, K·D] → [K, B, D] (a view)."""
    if packed.dim() != 2:
        raise RuntimeError(f"a packed network must end in [batch, K·outputs], got shape {tuple(packed.shape)}")
    return packed.view(packed.shape[0], k, -1).transpose(0, 1)


class PackedCohort:
    """Callable ``packed(x) -> (logits [K, B, C], features [K, B, D] or None)`` over live member models.

    The shared input x [B, C, ...] is repeated per member ([B, K·C, ...]; the first layer reads x once), run
    through the packed network, and the outputs are viewed per member."""

    kind = "packed"

    def __init__(self, models: list[nn.Module], names: list[str], with_features: bool = False):
        if len(models) < 2:
            raise NotPackable("a single member has nothing to pack")
        self.models, self.names, self.with_features = list(models), list(names), with_features
        self.network, self.shared = pack_network(self.models)
        if with_features and not hasattr(self.network, "forward_with_features"):
            raise NotPackable(f"{type(self.models[0]).__name__} has no forward_with_features")

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        k = len(self.models)
        repeated = x.repeat(1, k, *([1] * (x.dim() - 2)))
        self.shared.raw, self.shared.repeated, self.shared.version = x, repeated, repeated._version
        try:
            if self.with_features:
                logits, features = self.network.forward_with_features(repeated)
                return _unpack(logits, k), _unpack(features, k)
            return _unpack(self.network(repeated), k), None
        finally:
            self.shared.raw = self.shared.repeated = None
