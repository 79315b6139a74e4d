"""Task heads of the trained protocols: backbone features -> logits -> loss and scores.

A :class:`Head` reads a :class:`~radprobe.backbones.base.BackboneOutput` and owns its task's loss
and score conversion, so the training loop knows nothing about the task. ``grid_layers`` names the
patch grids a head needs from the backbone (none for classification); segmentation heads (from
:mod:`radprobe.segmentation.heads`) will plug in here with mask targets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radprobe.backbones.base import BackboneOutput


class Head(nn.Module):
    """Features -> logits, with the task's loss and the scores metrics are computed on."""

    grid_layers: tuple[int, ...] = ()

    def forward(self, feats: BackboneOutput) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def class_weights(labels: np.ndarray, task: str, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from training labels.

    Binary / multi-class: per-class CE weights ``n / (C * n_c)`` (``sklearn``'s "balanced").
    Multi-label: BCE ``pos_weight`` ``n_neg / n_pos`` per class. Classes without positives get 1.
    """
    y = np.asarray(labels)
    if task == "multilabel":
        pos = y.sum(0).astype(np.float64)
        neg = len(y) - pos
        w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    else:
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        w = np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


class ClassificationHead(Head):
    """A linear layer on the class token, the patch mean, or both concatenated.

    Binary uses two logits and cross-entropy (scores are (N, 2) softmax, like every protocol);
    multi-class cross-entropy; multi-label per-class BCE with sigmoid scores.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        task: str,
        pool: str = "cls",
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.pool = pool
        in_dim = 2 * dim if pool == "cls+mean" else dim
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)  # DINOv2's linear-head init
        nn.init.zeros_(self.fc.bias)
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, feats: BackboneOutput) -> torch.Tensor:  # type: ignore[override]
        if self.pool == "cls":
            x = feats.cls
        elif self.pool == "mean":
            x = feats.pooled
        else:
            x = torch.cat([feats.cls, feats.pooled], dim=1)
        return self.fc(x.float())

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=self.weights)
        return F.cross_entropy(logits, target.long(), weight=self.weights)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=1)
