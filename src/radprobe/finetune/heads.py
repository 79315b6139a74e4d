"""Task heads of the trained protocols: backbone features -> logits -> loss and scores.

A :class:`Head` reads a :class:`~radprobe.backbones.base.BackboneOutput` and owns its task's loss
and score conversion, so the training loop knows nothing about the task. ``grid_layers`` names the
patch grids a head needs from the backbone: none for classification; for :class:`SegmentationHead`
the levels its segmentation-room head (:mod:`radprobe.segmentation.heads`) reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radprobe.backbones.base import BackboneOutput

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone
    from radprobe.data import Dataset
    from radprobe.finetune.options import TrainOptions


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


class SegmentationHead(Head):
    """A frozen-protocol segmentation head (seg-linear's or seg-decoder's) on the live patch grids.

    ``decoder`` maps ``{layer: (B, D, h, w)}`` to logits at grid resolution; the loss upsamples them
    to the target masks and applies the frozen protocols' Dice + cross-entropy.
    """

    def __init__(self, decoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        from radprobe.segmentation.train import dice_ce_loss

        self.decoder = decoder
        self.num_classes = num_classes
        self.grid_layers = tuple(decoder.layers)
        self.loss_fn = dice_ce_loss()

    def forward(self, feats: BackboneOutput) -> torch.Tensor:  # type: ignore[override]
        return self.decoder({layer: feats.grid[layer].float() for layer in self.grid_layers})

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return self.loss_fn(logits, target[:, None].long())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1)


def segmentation_head(backbone: nn.Module, num_classes: int, kind: str, channels: int) -> SegmentationHead:
    """seg-linear's (``kind="linear"``) or seg-decoder's (``"decoder"``) head, sized for ``backbone``."""
    from radprobe.segmentation.heads import LightDecoder, LinearHead, decoder_plan, linear_layer

    info = backbone.info  # type: ignore[attr-defined]
    depth = max(1, info.num_blocks)
    if kind == "linear":
        layer = linear_layer(depth)
        (dim,) = grid_dims(backbone, [layer])
        return SegmentationHead(LinearHead(layer, dim, num_classes), num_classes)
    layers, scales = decoder_plan(depth, info.patch_size is not None)
    dims = grid_dims(backbone, layers)
    return SegmentationHead(LightDecoder(layers, dims, scales, num_classes, channels), num_classes)


def grid_dims(backbone: nn.Module, layers: list[int]) -> list[int]:
    """Channels of the backbone's grid at each layer (CNN stages differ), from one probe forward."""
    r = backbone.preprocess.resolution  # type: ignore[attr-defined]
    was_training = backbone.training
    backbone.eval()  # a BatchNorm in train mode would fold the probe into its running statistics
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = backbone(torch.zeros(1, 3, r, r), grid_layers=tuple(layers))
    finally:
        backbone.train(was_training)
    return [int(out.grid[layer].shape[1]) for layer in layers]


def make_head(dataset: Dataset, backbone: Backbone, opts: TrainOptions) -> Head:
    """The task's head: a linear classifier, or the segmentation room's seg-linear / seg-decoder head."""
    if dataset.task == "segmentation":
        return segmentation_head(backbone, len(dataset.classes), opts.seg_head, opts.decoder_channels)
    labels = dataset.labels(dataset.split("train"))
    weights = (
        class_weights(labels, dataset.task, len(dataset.classes))
        if opts.class_weights == "balanced"
        else None
    )
    return ClassificationHead(backbone.info.embed_dim, len(dataset.classes), dataset.task, opts.pool, weights)
