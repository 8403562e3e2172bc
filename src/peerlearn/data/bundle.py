"""A prepared dataset: train / validation / test splits in memory, plus what models need to know."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class Split:
    """Inputs and labels of one split. Label -1 marks an unlabelled item (semi-supervised)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labelled_fraction(self) -> float:
        return float((self.y >= 0).float().mean()) if len(self.y) else 0.0


@dataclass
class RetrievalSplit:
    """Images for retrieval (re-identification): identity and camera of each; identity −1 = junk, 0 = distractor."""

    x: torch.Tensor
    identities: torch.Tensor
    cameras: torch.Tensor
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.identities)


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: list[float] = field(default_factory=list)  # per channel (images, in 0..1 units) or per feature
    std: list[float] = field(default_factory=list)
    train_labels_full: torch.Tensor | None = None  # true labels of train, including hidden ones
    retrieval: dict[str, RetrievalSplit] = field(default_factory=dict)  # re-id sources: "query", "gallery"
    batch_transform: Optional[Callable] = None  # UserData.transform: applied to training batches after data.augment
    value_range: Optional[tuple[float, float]] = None  # (min, max) of the raw training inputs (data.statistics)
    feature_names: Optional[list[str]] = None  # tabular sources: the feature columns, in order

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.x.dim() == 4

    @property
    def in_channels(self) -> int:
        return self.input_shape[0] if self.is_image else 1

    @property
    def image_size(self) -> int:
        return self.input_shape[-1] if self.is_image else 0

    @property
    def in_features(self) -> int:
        shape = self.input_shape
        total = 1
        for d in shape:
            total *= d
        return total

    def model_kwargs(self) -> dict:
        """What the model factory needs to know about the inputs."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "in_features": self.in_features,
        }
