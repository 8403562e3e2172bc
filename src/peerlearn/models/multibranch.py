"""Shared-trunk multi-branch networks (ONE, CL-ILR, OKDDip, PCL): one trunk, K branches, K logits.

``MultiBranchNet(trunk, branches)`` runs the trunk once (or once per view, when each branch has its own
augmented input) and every branch on its output; ``forward`` returns a ``BranchOutputs`` with the stacked
branch logits [K, B, C], their pooled features [K, B, D] and the trunk's output. ``branch(k)`` is a
standalone ``PeerModel`` (input → logits) made of the *same* trunk and branch-k modules: evaluate, export or
deploy one branch with it; training the multi-branch net changes it too.

``create_multibranch(name, num_classes, num_branches=K)`` splits a zoo network the way the ONE / CL-ILR /
OKDDip code splits ResNets: the last stage, the pooling and the classifier are replicated K times (each copy
initialised as the zoo initialises a fresh network), everything before is shared.

======================  ===================  ========================================================
zoo model               trunk (shared)       branch (×K)
======================  ===================  ========================================================
``small_cnn``           ``body.0-2``         ``body.3-7`` (second conv stage, pool), ``dropout``,
                        (first conv stage)   ``classifier``
``resnet20/32/56``,     ``stem``, residual   the third residual group (``blocks.2n … blocks.3n−1``),
``cifar_resnet``        groups 1-2           ``pool``, ``dropout``, ``classifier``
                        (``blocks.0 … 2n−1``)
``mlp`` (≥ 2 hidden     ``body`` up to the   the last hidden layer (its Linear, ReLU, dropout),
layers)                 last hidden layer    ``classifier``
======================  ===================  ========================================================

State-dict keys (stable): ``trunk.<path>`` and ``branches.<k>.<path>``, where ``<path>`` is the module's
path in the zoo network (``trunk.stem.0.weight``, ``branches.2.blocks.14.conv1.weight``,
``branches.2.classifier.bias``). Dropping the prefixes therefore gives the zoo network's own keys:
``branch(k)`` of a zoo split *is* a zoo network (``CifarResNet``, ``SmallCNN``) sharing the modules, and
``branch_state_dict(net.state_dict(), k)`` loads into ``create_model(name, ...)`` as it is.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.mlp import MLP
from peerlearn.models.registry import available_models, create_model
from peerlearn.models.resnet import CifarResNet, blocks_per_group
from peerlearn.models.small_cnn import SmallCNN


# ----------------------------------------------------------------------------- gradient rescaling
class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient flowing back through ``x`` by ``factor``.

    CL-ILR's backpropagation rescaling: applied at the trunk's output with factor 1/H, the shared layers
    receive (1/H) · Σ_h ∂L_h/∂h — the mean of the H heads' gradients instead of their sum — while each head's
    own gradient is unchanged.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise ValueError(f"factor must be a finite number, got {factor!r}")
    return x if factor == 1 else _ScaleGradient.apply(x, float(factor))


# ----------------------------------------------------------------------------- branches
class Branch(nn.Module):
    """The replicated part: ``layers`` applied in order give the pooled features [B, D], then ``classifier``.

    ``layers`` maps child names to modules (the names become state-dict keys); ``classifier`` is the final
    linear layer (``feature_dim`` = its ``in_features``).
    """

    def __init__(self, layers: Mapping[str, nn.Module], classifier: nn.Linear):
        super().__init__()
        if "classifier" in layers:
            raise ValueError("a branch's layers cannot be named 'classifier' (the name of its final layer)")
        self._layer_names = tuple(layers)
        for name, module in layers.items():
            self.add_module(name, module)
        self.classifier = classifier
        self.feature_dim = classifier.in_features

    def features(self, h: torch.Tensor) -> torch.Tensor:
        for name in self._layer_names:
            h = getattr(self, name)(h)
        return h

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(h))


class BranchNet(PeerModel):
    """Trunk + one branch as a standalone ``PeerModel`` (input → logits), the modules shared, not copied.

    State-dict keys: ``trunk.*`` and ``branch.*``. ``reset_classifier`` replaces the branch's classifier,
    in the multi-branch network too.
    """

    def __init__(self, trunk: nn.Module, branch: Branch):
        super().__init__()
        self.trunk, self.branch = trunk, branch
        self.feature_dim = branch.feature_dim

    @property
    def classifier(self) -> nn.Module:  # type: ignore[override]
        return self.branch.classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch.features(self.trunk(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.branch.classifier = nn.Linear(self.feature_dim, num_classes)


class BranchOutputs(NamedTuple):
    """``MultiBranchNet.forward``'s result: ``logits`` [K, B, C], ``features`` [K, B, D] (each branch's
    pooled features, the classifier's input), ``trunk`` the trunk's output before any gradient rescaling
    (one tensor, or a tuple of K when each branch had its own input)."""

    logits: torch.Tensor
    features: torch.Tensor
    trunk: Union[torch.Tensor, tuple[torch.Tensor, ...]]


class MultiBranchNet(nn.Module):
    """K branches on one trunk. ``forward(x)`` → ``BranchOutputs`` (logits [K, B, C], features [K, B, D]).

    ``x`` is one batch [B, ...] (the trunk runs once, every branch reads its output) or a sequence of K
    batches, one view per branch (PCL, KDCL-style augmentation: the trunk runs once per view, so branch k's
    output equals ``branch(k)(x[k])``). ``trunk_grad_scale`` s multiplies the gradient that the branches
    send into the trunk (``scale_gradient``; CL-ILR uses s = 1/K); the returned ``trunk`` output is taken
    before the rescaling, so a module reading it (ONE's gate) sends its gradient unscaled.

    ``views`` (given by the zoo splits) are K prebuilt networks equal to trunk + branch k, returned by
    ``branch(k)``; they are kept out of the module tree (no duplicate keys), share every module with it and
    follow it through ``to()``, ``load_state_dict`` and ``copy.deepcopy``. Without them ``branch(k)`` is a
    ``BranchNet``.
    """

    def __init__(self, trunk: nn.Module, branches: Sequence[Branch], trunk_grad_scale: float = 1.0,
                 views: Optional[Sequence[PeerModel]] = None, base_model: Optional[str] = None):
        super().__init__()
        if len(branches) < 1:
            raise ValueError("MultiBranchNet needs at least one branch")
        if views is not None and len(views) != len(branches):
            raise ValueError(f"views must be one per branch ({len(branches)}), got {len(views)}")
        dims = {b.feature_dim for b in branches}
        if len(dims) != 1:
            raise ValueError(f"every branch must have the same feature dimension, got {sorted(dims)}")
        self.trunk = trunk
        self.branches = nn.ModuleList(branches)
        self.trunk_grad_scale = trunk_grad_scale
        self.feature_dim = dims.pop()
        self.base_model = base_model
        self._views = tuple(views) if views is not None else None

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def trunk_grad_scale(self) -> float:
        return self._trunk_grad_scale

    @trunk_grad_scale.setter
    def trunk_grad_scale(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"trunk_grad_scale must be a finite number > 0, got {value!r}")
        self._trunk_grad_scale = float(value)

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> BranchOutputs:
        count = self.num_branches
        if isinstance(x, torch.Tensor):
            shared = self.trunk(x)
            inputs = [scale_gradient(shared, self.trunk_grad_scale)] * count
            trunk_out: Union[torch.Tensor, tuple[torch.Tensor, ...]] = shared
        else:
            if len(x) != count:
                raise ValueError(f"MultiBranchNet takes one batch or one view per branch ({count}), got {len(x)}")
            trunk_out = tuple(self.trunk(view) for view in x)
            inputs = [scale_gradient(h, self.trunk_grad_scale) for h in trunk_out]
        features = [branch.features(h) for branch, h in zip(self.branches, inputs)]
        logits = [branch.classifier(f) for branch, f in zip(self.branches, features)]
        return BranchOutputs(torch.stack(logits), torch.stack(features), trunk_out)

    def branch(self, k: int) -> PeerModel:
        """Trunk + branch ``k`` as a standalone ``PeerModel`` mapping inputs to logits (shared modules)."""
        if not 0 <= k < self.num_branches:
            raise IndexError(f"branch index must be in [0, {self.num_branches - 1}], got {k}")
        if self._views is not None:
            return self._views[k]
        return BranchNet(self.trunk, self.branches[k])


def branch_state_dict(state_dict: Mapping[str, torch.Tensor], k: int) -> "OrderedDict[str, torch.Tensor]":
    """Branch ``k``'s standalone weights from a ``MultiBranchNet`` state dict (e.g. a checkpoint), without
    building the network: ``trunk.<path>`` → ``<path>``, ``branches.<k>.<path>`` → ``<path>``, other branches
    left out. For a zoo split the result loads into ``create_model(base_model, ...)``."""
    prefix = f"branches.{k}."
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith("trunk."):
            out[key[len("trunk."):]] = value
        elif key.startswith(prefix):
            out[key[len(prefix):]] = value
    if not any(key.startswith(prefix) for key in state_dict):
        raise KeyError(f"the state dict has no branch {k} (no key starting with {prefix!r})")
    return out


# ----------------------------------------------------------------------------- zoo splits
def _indexed(sequence: nn.Sequential, indices: range) -> nn.Sequential:
    """The listed children of ``sequence`` under their original indices (so keys keep the zoo's paths)."""
    return nn.Sequential(OrderedDict((str(i), sequence[i]) for i in indices))


def _split_cifar_resnet(models: Sequence[CifarResNet]) -> tuple[nn.Module, list[Branch]]:
    first = models[0]
    cut = 2 * blocks_per_group(first.depth)  # groups 1 and 2 are shared, group 3 is replicated
    for model in models[1:]:
        model.stem = first.stem
        for i in range(cut):
            model.blocks[i] = first.blocks[i]
    trunk = nn.Sequential(OrderedDict(stem=first.stem, blocks=_indexed(first.blocks, range(cut))))
    branches = [Branch(OrderedDict(blocks=_indexed(m.blocks, range(cut, len(m.blocks))), pool=m.pool,
                                   dropout=m.dropout), m.classifier) for m in models]
    return trunk, branches


SMALL_CNN_CUT = 3  # body.0-2: the first conv-bn-relu pair and its max-pool


def _split_small_cnn(models: Sequence[SmallCNN]) -> tuple[nn.Module, list[Branch]]:
    first = models[0]
    for model in models[1:]:
        for i in range(SMALL_CNN_CUT):
            model.body[i] = first.body[i]
    trunk = nn.Sequential(OrderedDict(body=_indexed(first.body, range(SMALL_CNN_CUT))))
    branches = [Branch(OrderedDict(body=_indexed(m.body, range(SMALL_CNN_CUT, len(m.body))), dropout=m.dropout),
                       m.classifier) for m in models]
    return trunk, branches


def _split_mlp(models: Sequence[MLP]) -> tuple[nn.Module, list[Branch]]:
    """Feature vectors (tabular data): every hidden layer but the last is shared, the last one (Linear, ReLU and
    its dropout) and the classifier are replicated."""
    first = models[0]
    linears = [i for i, layer in enumerate(first.body) if isinstance(layer, nn.Linear)]
    if len(linears) < 2:
        raise ValueError("the multi-branch form of mlp needs at least 2 hidden layers (model_args widths with "
                         f"two or more entries), got {len(linears)}")
    cut = linears[-1]
    for model in models[1:]:
        for i in range(cut):
            model.body[i] = first.body[i]
    trunk = nn.Sequential(OrderedDict(body=_indexed(first.body, range(cut))))
    branches = [Branch(OrderedDict(body=_indexed(m.body, range(cut, len(m.body)))), m.classifier) for m in models]
    return trunk, branches


Splitter = Callable[[Sequence[PeerModel]], tuple[nn.Module, list[Branch]]]
_SPLITS: dict[str, Splitter] = {}


def register_multibranch(name: str, splitter: Splitter) -> None:
    """Let ``create_multibranch`` split zoo model ``name``: ``splitter`` takes K freshly built networks,
    ties their shared modules to the first one's (so each network becomes trunk + its branch) and returns
    (trunk, branches)."""
    if name in _SPLITS:
        raise ValueError(f"multi-branch split {name!r} is registered twice")
    if name not in available_models():
        raise ValueError(f"{name!r} is not a zoo model; allowed: {', '.join(available_models())}")
    _SPLITS[name] = splitter


def available_multibranch() -> list[str]:
    """The zoo models that ``create_multibranch`` can split."""
    return sorted(_SPLITS)


def create_multibranch(name: str, num_classes: int, num_branches: int = 3, in_channels: int = 3,
                       image_size: int = 32, trunk_grad_scale: float = 1.0, **kwargs) -> MultiBranchNet:
    """The multi-branch form of zoo model ``name`` with ``num_branches`` branches (see the module's table).

    The K networks are built by ``create_model(name, num_classes, in_channels, image_size, **kwargs)`` one
    after the other (so each branch has the zoo's own initialisation, drawn independently), then the shared
    part of the first is used by all. ``branch(k)`` returns network k itself: a plain zoo model whose weights
    are those of trunk + branch k.
    """
    if name not in _SPLITS:
        raise ValueError(f"no multi-branch split for model {name!r}; allowed: {', '.join(available_multibranch())}")
    if isinstance(num_branches, bool) or not isinstance(num_branches, int) or num_branches < 1:
        raise ValueError(f"num_branches must be an integer ≥ 1, got {num_branches!r}")
    models = [create_model(name, num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
              for _ in range(num_branches)]
    trunk, branches = _SPLITS[name](models)
    return MultiBranchNet(trunk, branches, trunk_grad_scale, views=models, base_model=name)


for _name in ("cifar_resnet", "resnet20", "resnet32", "resnet56"):
    register_multibranch(_name, _split_cifar_resnet)
register_multibranch("small_cnn", _split_small_cnn)
register_multibranch("mlp", _split_mlp)
