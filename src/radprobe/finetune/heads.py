"""Task heads of the trained protocols: backbone features -> logits -> loss and scores.

A :class:`Head` reads a :class:`~radprobe.backbones.base.BackboneOutput` and owns its task's loss
and score conversion, so the training loop knows nothing about the task. ``grid_layers`` names the
patch grids a head needs from the backbone: none for classification; for :class:`SegmentationHead`
the levels its segmentation-room head (:mod:`radprobe.segmentation.heads`) reads.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    """Features -> logits, with the task's loss and the scores metrics are computed on.

    ``n_blocks`` is how many of the last blocks' tokens the head reads (``BackboneOutput.blocks``).
    """

    grid_layers: tuple[int, ...] = ()
    n_blocks: int = 1

    def lr_of(self, name: str) -> float | None:
        """The learning rate of parameter ``name`` (relative to the head), or None for the run's ``lr``."""
        return None

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


@dataclass(frozen=True)
class GridConfig:
    """One head of the paper's grid: learning rate, last blocks' class tokens, and the patch mean."""

    lr: float
    n_blocks: int
    avgpool: bool


# Baharoon et al.'s released code, dinov2/eval/classification/linear.py:187-190 and the loop order of
# classification/utils.py:75-77 (blocks, then avgpool, then lr); ties go to the first head (l.250).
PAPER_GRID_LRS = (1e-3, 5e-3, 1e-2, 5e-2)
PAPER_GRID_INPUTS = ((1, True), (1, False), (4, True), (4, False))


def paper_grid(depth: int, is_vit: bool) -> tuple[list[GridConfig], list[str]]:
    """The paper's 16 head configs on a backbone of ``depth`` blocks, and what had to be narrowed.

    CNNs have no class tokens: the paper gives them one block without avgpool (linear.py:421-423).
    Blocks beyond ``depth`` are capped; inputs that then coincide are kept once.
    """
    notes = []
    inputs = list(PAPER_GRID_INPUTS) if is_vit else [(1, False)]
    if not is_vit:
        notes.append("no class tokens: the paper's CNN grid, 1 block without avgpool")
    if any(n > depth for n, _ in inputs):
        inputs = list(dict.fromkeys((min(n, depth), a) for n, a in inputs))
        notes.append(f"backbone has {depth} block(s): last 4 blocks capped at {depth}")
    return [GridConfig(lr, n, a) for n, a in inputs for lr in PAPER_GRID_LRS], notes


class HeadGrid(Head):
    """Linear heads trained at once on the shared backbone, as Baharoon et al.'s code trains them.

    Each head reads the class tokens of the last ``n_blocks`` blocks (oldest first), plus the last
    block's patch mean with ``avgpool``, and trains at its own lr; the loss is the sum over heads.
    As released (linear.py:318-331, 439): binary heads have one logit (BCE); multi-class heads use
    cross-entropy; multi-label heads each sample's mean BCE over the labels, summed over the batch.
    Scores are sigmoids of the logits (classification/utils.py:61). ``selected`` (a buffer, so
    checkpoints keep it) is the head that predicts; validation sets it.
    """

    def __init__(self, dim: int, num_classes: int, task: str, configs: list[GridConfig]) -> None:
        super().__init__()
        self.task = task
        self.configs = list(configs)
        self.outputs = 1 if task == "binary" else num_classes
        self.n_blocks = max(c.n_blocks for c in self.configs)
        self.fcs = nn.ModuleList(
            nn.Linear(dim * (c.n_blocks + int(c.avgpool)), self.outputs) for c in self.configs
        )
        for fc in self.fcs:
            nn.init.normal_(fc.weight, std=0.01)  # classification/utils.py:33-34
            nn.init.zeros_(fc.bias)
        self.register_buffer("selected", torch.zeros((), dtype=torch.long))

    @property
    def choice(self) -> GridConfig:
        return self.configs[int(self.selected)]

    def lr_of(self, name: str) -> float | None:
        return self.configs[int(name.split(".")[1])].lr  # fcs.<i>.weight

    def forward(self, feats: BackboneOutput) -> torch.Tensor:  # type: ignore[override]
        """Logits (B, heads, outputs)."""
        blocks = feats.blocks
        out = []
        for c, fc in zip(self.configs, self.fcs, strict=True):
            x = blocks[:, -c.n_blocks :, 0].flatten(1)
            if c.avgpool:
                x = torch.cat([x, blocks[:, -1, 1]], dim=1)
            out.append(fc(x.float()))
        return torch.stack(out, dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task == "multiclass":
            heads = logits.shape[1]
            return F.cross_entropy(logits.flatten(0, 1), target.long().repeat_interleave(heads)) * heads
        y = target.float().reshape(len(target), 1, -1).expand_as(logits)
        known = (y >= 0).float()  # unknown multi-label entries (-1) add nothing
        per = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0), reduction="none") * known
        if self.task == "binary":
            return per.sum() / len(target)  # mean over the batch, summed over heads
        return per.sum() / self.outputs  # per sample: mean over labels; summed over batch and heads

    def head_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.head_probs(logits[:, int(self.selected)])
        return torch.cat([1 - p, p], dim=1) if self.task == "binary" else p

    def val_scores(self, labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Each head's validation AUROC (H,) from its sigmoid outputs ``probs`` (H, N, outputs): the
        paper's binary and multi-label AUROC; multi-class one-vs-rest macro AUROC."""
        from radprobe.metrics.fast import headline_scores

        y = np.asarray(labels)
        if self.task == "binary":
            y = y[:, None]
        elif self.task == "multiclass":
            y = np.eye(self.outputs, dtype=int)[y]
        return headline_scores(y, probs, "multilabel")


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
    """The task's head: a linear classifier (``head_grid=paper``: the paper's grid of them), or the
    segmentation room's seg-linear / seg-decoder head."""
    if dataset.task == "segmentation":
        return segmentation_head(backbone, len(dataset.classes), opts.seg_head, opts.decoder_channels)
    if opts.head_grid == "paper":
        info = backbone.info
        configs, _ = paper_grid(max(1, info.num_blocks), info.patch_size is not None)
        return HeadGrid(info.embed_dim, len(dataset.classes), dataset.task, configs)
    labels = dataset.labels(dataset.split("train"))
    weights = (
        class_weights(labels, dataset.task, len(dataset.classes))
        if opts.class_weights == "balanced"
        else None
    )
    return ClassificationHead(backbone.info.embed_dim, len(dataset.classes), dataset.task, opts.pool, weights)
