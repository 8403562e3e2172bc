"""The small trainable modules of the online-distillation methods, beside their branch networks:

    OneGate                 ONE's gate: trunk output → global average pool → FC → BN → ReLU → softmax over K
    PeerAttention           OKDDip's query/key projections of the peers' features → attention [B, K, K]
    PeerEnsembleClassifier  PCL's peer ensemble teacher: one linear classifier on the K concatenated features

Each is trained with the branches (its parameters belong in the optimiser) and checkpointed with them.
The losses that read their outputs are in ``peerlearn.losses`` (``one_loss``, ``okddip_loss``, ``pcl_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def peer_attention(queries: torch.Tensor, keys: torch.Tensor, include_self: bool = False) -> torch.Tensor:
    """OKDDip's aggregation weights: a[b, i, j] = exp(q_i·k_j) / Σ_l exp(q_i·k_l); [K, B, d] twice → [B, K, K].

    q_i = L(h_i) and k_j = E(h_j) are two learned linear projections of peer i's and peer j's features
    (``peerlearn.models.online_parts.PeerAttention``). Each row sums to 1. ``include_self=False`` leaves
    l = i out of the softmax (a[b, i, i] = 0: a peer's target comes from the *other* peers, as the paper's
    text says); ``True`` keeps it, as the authors' code does.
    """
    if queries.dim() != 3 or queries.shape != keys.shape:
        raise ValueError(f"queries and keys must both be [K, B, d], got {tuple(queries.shape)} and "
                         f"{tuple(keys.shape)}")
    count = queries.shape[0]
    if count < 2 and not include_self:
        raise ValueError("peer_attention without self needs at least 2 peers")
    energy = torch.einsum("ibd,jbd->bij", queries, keys)
    if not include_self:
        eye = torch.eye(count, dtype=torch.bool, device=energy.device)
        energy = energy.masked_fill(eye, float("-inf"))
    return F.softmax(energy, dim=-1)


class OneGate(nn.Module):
    """ONE's gate g(x) [B, K]: softmax(ReLU(BN(W · pool(h)))) from the trunk output h [B, C_h, H, W] (or
    already pooled features [B, C_h]); each row sums to 1 and weights the K branches' logits
    (``peerlearn.losses.gated_ensemble``).

    As in the paper and the authors' code: global average pooling, one fully connected layer to K values,
    1-D batch normalisation, ReLU, softmax. The gate reads the trunk's output with its graph, so CE(z_e, y)
    also trains the trunk through the gate; ``detach_input=True`` makes the gate a pure read-out of the
    trunk (an option the paper leaves open). State-dict keys: ``fc.weight``, ``fc.bias``, ``bn.*``.
    """

    def __init__(self, in_channels: int, num_branches: int, detach_input: bool = False):
        super().__init__()
        if num_branches < 2:
            raise ValueError(f"num_branches must be ≥ 2 for a gate, got {num_branches}")
        self.fc = nn.Linear(in_channels, num_branches)
        self.bn = nn.BatchNorm1d(num_branches)
        self.detach_input = detach_input

    def forward(self, trunk_output: torch.Tensor) -> torch.Tensor:
        h = trunk_output.detach() if self.detach_input else trunk_output
        if h.dim() == 4:
            h = h.mean(dim=(2, 3))
        elif h.dim() != 2:
            raise ValueError(f"OneGate expects [B, C, H, W] or [B, C], got shape {tuple(h.shape)}")
        return F.softmax(F.relu(self.bn(self.fc(h))), dim=1)


class PeerAttention(nn.Module):
    """OKDDip's attention over the auxiliary peers: a[b, i, j] = softmax_j( L(h_i) · E(h_j) ).

    ``forward(features)`` takes the peers' pooled features [K, B, D] and returns [B, K, K] (rows sum to 1,
    see ``peerlearn.losses.peer_attention``). L and E (``query``, ``key``) are two linear maps D → D / factor
    without bias, shared by all peers, as in the authors' code (factor 8). ``include_self`` keeps a peer in
    its own mixture (the authors' code) or leaves it out (the paper's "other peers", the default).
    """

    def __init__(self, feature_dim: int, factor: int = 8, include_self: bool = False):
        super().__init__()
        if factor < 1 or feature_dim // factor < 1:
            raise ValueError(f"factor must be in [1, feature_dim] = [1, {feature_dim}], got {factor}")
        self.query = nn.Linear(feature_dim, feature_dim // factor, bias=False)
        self.key = nn.Linear(feature_dim, feature_dim // factor, bias=False)
        self.include_self = include_self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(f"PeerAttention expects the peers' features [K, B, D], got shape {tuple(features.shape)}")
        return peer_attention(self.query(features), self.key(features), self.include_self)


class PeerEnsembleClassifier(nn.Module):
    """PCL's peer ensemble teacher: z_e = W · [h_1; h_2; …; h_K] + b, logits [B, C] from the K branches'
    pooled features [K, B, D] concatenated in branch order ([B, K·D]). Trained by CE(z_e, y); distilled into
    the branches (``peerlearn.losses.pcl_loss``). State-dict keys: ``fc.weight`` [C, K·D], ``fc.bias``."""

    def __init__(self, feature_dim: int, num_branches: int, num_classes: int):
        super().__init__()
        self.num_branches, self.feature_dim = num_branches, feature_dim
        self.fc = nn.Linear(feature_dim * num_branches, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        expected = (self.num_branches, self.feature_dim)
        if features.dim() != 3 or (features.shape[0], features.shape[2]) != expected:
            raise ValueError(f"PeerEnsembleClassifier expects features [K, B, D] with K, D = {expected}, "
                             f"got shape {tuple(features.shape)}")
        return self.fc(features.permute(1, 0, 2).reshape(features.shape[1], -1))
