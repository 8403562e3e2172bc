"""The layerwise CNN of greedy layerwise learning (Belilovsky, Eickenberg, Oyallon 2019).

Block j computes

    x_{j+1} = ρ(BN(W_j P_j x_j))          (BN only when k > 1)

with W_j a 3×3 convolution, ρ the ReLU and P_j either the identity or the invertible downsampling
(space-to-depth): every 2×2 patch of a C-channel map becomes one pixel with 4C channels, so nothing is
lost, unlike strided, max or average pooling. After a downsampling the block's width doubles.

Each block has an auxiliary classifier C_j: k − 1 extra 3×3 conv layers (conv [+BN] + ReLU), spatial
averaging to 2×2, then one linear layer; z_j = C_j(x_{j+1}). The network used as a classifier is the
blocks up to ``depth`` plus the auxiliary head of the last of them, and the ensemble of the heads is

    Z = Σ_j 2^j z_j / Σ_j 2^j.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from peerlearn.models.base import PeerModel
from peerlearn.models.registry import register_model


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """Invertible downsampling: (N, C, H, W) → (N, 4C, H/2, W/2); a permutation of the values.

    Output channel 4c + 2a + b holds input channel c at rows 2i + a, columns 2j + b.
    """
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"invertible downsampling needs an even height and width, got {h}×{w}")
    return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def depth_to_space(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``space_to_depth``: (N, 4C, H, W) → (N, C, 2H, 2W)."""
    n, c4, h, w = x.shape
    c = c4 // 4
    return x.reshape(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)


def weighted_ensemble(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Z = Σ_j 2^j z_j / Σ_j 2^j (j = 0, 1, ...): deeper heads weigh more."""
    weights = [2.0 ** j for j in range(len(logits))]
    return sum(w * z for w, z in zip(weights, logits)) / sum(weights)


class SpaceToDepth(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth(x)


def conv_block(cin: int, cout: int, batchnorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class AveragePoolTo(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(pool)`` (average a map to ``pool``×``pool`` cells) that, when the map's size divides
    evenly, computes it as a plain average pooling with a (H/pool)×(W/pool) window: the same values, and an
    operator every ONNX exporter writes (the adaptive one is refused where the traced size is not a constant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.output_size
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if isinstance(pool, int) and height % pool == 0 and width % pool == 0:
            return F.avg_pool2d(x, (height // pool, width // pool))
        return super().forward(x)


class AuxiliaryHead(nn.Module):
    """C_j: (k − 1) × [3×3 conv (+BN) + ReLU], average to ``pool``×``pool``, linear."""

    def __init__(self, channels: int, num_classes: int, extra_convs: int, width: int, batchnorm: bool, pool: int):
        super().__init__()
        convs = []
        for index in range(extra_convs):
            convs.append(conv_block(channels if index == 0 else width, width, batchnorm))
        out = width if extra_convs else channels
        self.body = nn.Sequential(*convs, AveragePoolTo(pool), nn.Flatten())
        self.feature_dim = out * pool * pool
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.body(x))


class LayerwiseCNN(PeerModel):
    """J blocks, one auxiliary head per block; ``forward`` = blocks[:depth] then head[depth − 1].

    ``freeze_below(j)`` marks blocks < j (and every head but the active one) as frozen: no gradients,
    and ``train()`` keeps them in eval mode so their BatchNorm statistics stay fixed.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, blocks: int = 3, width: int = 32,
                 k: int = 1, downsample_at: Sequence[int] = (1,), batchnorm: Optional[bool] = None,
                 head_width: Optional[int] = None, pool: int = 2):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be ≥ 1, got {blocks}")
        if k not in (1, 2, 3):
            raise ValueError(f"k (layers of an auxiliary problem) must be 1, 2 or 3, got {k}")
        bad = sorted(set(downsample_at) - set(range(blocks)))
        if bad:
            raise ValueError(f"downsample_at {list(downsample_at)} names blocks {bad} outside 0..{blocks - 1}")
        batchnorm = k > 1 if batchnorm is None else batchnorm
        self.k = k
        self.downsample_at = sorted(set(downsample_at))
        channels, size, block_width = in_channels, image_size, width
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.widths: list[int] = []
        for j in range(blocks):
            layers: list[nn.Module] = []
            if j in self.downsample_at:
                if size % 2:
                    raise ValueError(f"block {j} downsamples a {size}×{size} map; sizes must be even there "
                                     "(choose other downsample_at or data.image_size)")
                layers.append(SpaceToDepth())
                channels, size = 4 * channels, size // 2
                if j > 0:
                    block_width *= 2
            layers.append(conv_block(channels, block_width, batchnorm))
            self.blocks.append(nn.Sequential(*layers))
            self.heads.append(AuxiliaryHead(block_width, num_classes, k - 1, head_width or block_width, batchnorm, pool))
            channels = block_width
            self.widths.append(block_width)
        self.depth = blocks  # how many blocks ``forward`` uses
        self.frozen_below = 0

    # ------------------------------------------------------------------ stages
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def classifier(self) -> nn.Module:  # the active head's linear layer (PeerModel contract)
        return self.heads[self.depth - 1].linear

    @property
    def feature_dim(self) -> int:
        return self.heads[self.depth - 1].feature_dim

    def reset_classifier(self, num_classes: int) -> None:
        self.heads[self.depth - 1].linear = nn.Linear(self.feature_dim, num_classes)

    def stage_parameters(self, j: int) -> list[nn.Parameter]:
        """What greedy stage j trains: block j and its auxiliary head."""
        return [*self.blocks[j].parameters(), *self.heads[j].parameters()]

    def freeze_below(self, j: int) -> None:
        """Train blocks j..depth−1 and head[depth − 1]; freeze blocks < j (and the unused ones after depth)."""
        self.frozen_below = j
        for index, block in enumerate(self.blocks):
            block.requires_grad_(j <= index < self.depth)
        for index, head in enumerate(self.heads):
            head.requires_grad_(index == self.depth - 1)
        self.train(self.training)

    def train(self, mode: bool = True) -> "LayerwiseCNN":
        super().train(mode)
        for index in range(self.frozen_below):
            self.blocks[index].eval()
        for index, head in enumerate(self.heads):
            if index != self.depth - 1:
                head.eval()
        return self

    # ------------------------------------------------------------------ forward
    def prefix(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """x_j: the output of blocks 0..j−1 (x itself for j = 0)."""
        for block in self.blocks[:j]:
            x = block(x)
        return x

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[x_1, ..., x_J]: every block's output."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def head_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[z_1, ..., z_J]: every auxiliary head on its block's output."""
        return [head(h) for head, h in zip(self.heads, self.block_outputs(x))]

    def ensemble_logits(self, x: torch.Tensor, depth: Optional[int] = None) -> torch.Tensor:
        """Z = Σ_j 2^j z_j / Σ_j 2^j over the first ``depth`` heads (all by default)."""
        return weighted_ensemble(self.head_logits(x)[: depth or self.num_blocks])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.depth - 1].body(self.prefix(x, self.depth))

    def stage_paths(self) -> dict[str, str]:
        """``stage<j>`` = ``blocks.<j-1>`` (x_j, every block's output); ``features`` and ``classifier`` = the input
        and output of the active head's linear layer (``heads.<depth-1>.linear``: they move with ``depth``)."""
        head = f"heads.{self.depth - 1}.linear"
        stages = {f"stage{j}": f"blocks.{j - 1}" for j in range(1, self.num_blocks + 1)}
        return {**stages, "features": f"{head}:input", "classifier": head}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.depth - 1](self.prefix(x, self.depth))


@register_model("layerwise_cnn")
def layerwise_cnn(num_classes: int, in_channels: int, image_size: int, blocks: int = 3, width: int = 32, k: int = 1,
                  downsample_at: Sequence[int] = (1,), batchnorm: Optional[bool] = None,
                  head_width: Optional[int] = None, pool: int = 2) -> LayerwiseCNN:
    """Greedy layerwise CNN: ``blocks`` J, ``width`` M, ``k`` layers per auxiliary problem."""
    return LayerwiseCNN(in_channels, num_classes, image_size, blocks, width, k, downsample_at, batchnorm,
                        head_width, pool)
