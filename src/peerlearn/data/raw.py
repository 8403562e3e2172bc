"""The raw form every dataset source returns, before splitting and normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class RawDataset:
    """Official train/test parts of a dataset, held in memory.

    Images are uint8 tensors shaped [N, C, H, W] (0..255); tabular features are float32 [N, F].
    Labels are int64 [N] in 0..num_classes-1.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    extras: dict = field(default_factory=dict)
    test_x_extra: Optional[dict] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_image(self) -> bool:
        return self.train_x.dim() == 4
