"""Linear probing, DINOv2 style: a grid of linear heads trained at once on cached features.

The grid is learning rates x n_last_blocks x avgpool (13 x 2 x 2 = 52 heads by default). Every head
sees the same mini-batches; the heads' losses are summed into one backward pass, and a fused SGD
step (momentum 0.9, no weight decay, cosine schedule, lr scaled by batch/256) updates each head with
its own learning rate. All heads live in one (variants, heads, D, C) tensor, so a step is a single
batched matmul, and multi-label BCE runs over (heads x batch x classes) at once. The best head is
chosen on validation only; the test split is scored once.

A head's initial weights come from a generator seeded by (seed, its config), and the batch order
from ``seed`` alone, so each head of the grid trains exactly as it would alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from radprobe.protocols.base import ProtocolInput, ProtocolResult, SplitFeatures, validation_score
from radprobe.utils import digest

DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


@dataclass(frozen=True)
class HeadConfig:
    """One head of the grid: base learning rate and its input variant."""

    lr: float
    n_blocks: int
    avgpool: bool


def head_grid(
    lrs: Sequence[float] = DINOV2_LRS,
    n_blocks: Sequence[int] = (1, 4),
    avgpool: Sequence[bool] = (False, True),
) -> list[HeadConfig]:
    """The cartesian grid of head configs."""
    return [HeadConfig(float(lr), int(n), bool(a)) for n in n_blocks for a in avgpool for lr in lrs]


def linear_input(blocks: torch.Tensor, n_blocks: int, avgpool: bool) -> torch.Tensor:
    """Concatenate the class tokens of the last ``n_blocks`` blocks (+ last block's patch mean)."""
    x = blocks[:, -n_blocks:, 0].flatten(1)
    if avgpool:
        x = torch.cat([x, blocks[:, -1, 1]], dim=1)
    return x


def _blocks(split: SplitFeatures) -> torch.Tensor:
    if split.blocks is not None:
        return torch.from_numpy(np.array(split.blocks, dtype=np.float32))  # copy of a read-only map
    f = torch.from_numpy(np.array(split.features, dtype=np.float32))
    return torch.stack([f, f], dim=1)[:, None]  # (N, 1, 2, D): no block features cached


def _init_seed(seed: int, cfg: HeadConfig) -> int:
    return int(digest({"seed": seed, "head": asdict(cfg)}, 15), 16)


class _Grid:
    """Every head of the grid in one tensor: weights (V, H, D, C) over V input variants.

    A variant's inputs are zero-padded to the widest variant's D, so padded weights see zero input,
    get zero gradient and never move: each head trains exactly as on its own. Variants with fewer
    heads than the widest are padded with inert heads (learning rate 0, loss masked out).
    """

    def __init__(
        self, configs: Sequence[HeadConfig], dims: dict[tuple[int, bool], int], num_classes: int, seed: int
    ) -> None:
        self.variants = sorted(dims)
        self.dims = dims
        per_variant = [[c for c in configs if (c.n_blocks, c.avgpool) == v] for v in self.variants]
        n_v, n_h, d = len(self.variants), max(len(h) for h in per_variant), max(dims.values())
        self.w = torch.zeros(n_v, n_h, d, num_classes)
        self.b = torch.zeros(n_v, n_h, num_classes)
        self.lr = torch.zeros(n_v, n_h)
        self.live = torch.zeros(n_v, n_h)
        self.slots: dict[HeadConfig, tuple[int, int]] = {}
        for vi, (v, heads) in enumerate(zip(self.variants, per_variant, strict=True)):
            for hi, cfg in enumerate(heads):
                g = torch.Generator().manual_seed(_init_seed(seed, cfg))
                # DINOv2 heads: weights N(0, 0.01), bias 0
                self.w[vi, hi, : dims[v]] = torch.randn(dims[v], num_classes, generator=g) * 0.01
                self.lr[vi, hi] = cfg.lr
                self.live[vi, hi] = 1.0
                self.slots[cfg] = (vi, hi)
        self.w.requires_grad_()
        self.b.requires_grad_()
        self.buf_w = torch.zeros_like(self.w)
        self.buf_b = torch.zeros_like(self.b)

    @property
    def configs(self) -> list[HeadConfig]:
        return list(self.slots)

    def inputs(self, blocks: torch.Tensor) -> torch.Tensor:
        """(V, B, D) padded linear inputs of a batch of block features."""
        d = self.w.shape[2]
        return torch.stack([F.pad(linear_input(blocks, *v), (0, d - self.dims[v])) for v in self.variants])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(V, H, B, C) logits of every head."""
        return torch.einsum("vbd,vhdc->vhbc", x, self.w) + self.b[:, :, None]

    def loss(self, x: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
        """Sum over live heads of each head's mean loss."""
        z = self.logits(x)
        n_v, n_h, bsz, c = z.shape
        per_head = head_losses(z.reshape(n_v * n_h, bsz, c), y, task).view(n_v, n_h)
        return (per_head * self.live).sum()

    @torch.no_grad()
    def step(self, scale: float, momentum: float) -> None:
        """SGD with momentum, each head with its own learning rate (PyTorch's update rule)."""
        for p, buf in ((self.w, self.buf_w), (self.b, self.buf_b)):
            buf.mul_(momentum).add_(p.grad)
            lr = (self.lr * scale).view(*self.lr.shape, *([1] * (p.ndim - 2)))
            p.sub_(lr * buf)
            p.grad = None


def head_losses(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Per-head mean loss (H,) of logits (H, B, C): cross-entropy, or BCE over all labels at once."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, y.float().expand_as(logits), reduction="none").mean(
            dim=(1, 2)
        )
    h, b, c = logits.shape
    return F.cross_entropy(logits.reshape(h * b, c), y.repeat(h), reduction="none").view(h, b).mean(1)


def train_heads(
    train: SplitFeatures,
    task: str,
    num_classes: int,
    configs: Sequence[HeadConfig],
    *,
    epochs: int = 10,
    min_iterations: int = 500,
    batch_size: int = 256,
    momentum: float = 0.9,
    seed: int = 0,
) -> _Grid:
    """Train every head of ``configs`` in one pass over the cached features: one backward per step."""
    blocks = _blocks(train)
    y = torch.as_tensor(np.asarray(train.labels)).long()
    n = len(y)
    bs = min(batch_size, n)
    iterations = max(epochs * math.ceil(n / bs), min_iterations)
    lr_scale = bs / 256  # DINOv2: lr = base_lr * batch / 256
    dims = {v: linear_input(blocks[:1], *v).shape[1] for v in {(c.n_blocks, c.avgpool) for c in configs}}
    grid = _Grid(configs, dims, num_classes, seed)
    order_gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=order_gen)
    pos = 0
    for it in range(iterations):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=order_gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        # heads are independent: the summed loss gives each head its own gradient
        grid.loss(grid.inputs(blocks[idx]), y[idx], task).backward()
        grid.step(lr_scale * 0.5 * (1 + math.cos(math.pi * it / iterations)), momentum)
    return grid


@torch.no_grad()
def predict(grid: _Grid, split: SplitFeatures, task: str, chunk: int = 4096) -> dict[HeadConfig, np.ndarray]:
    """Scores (N, C) of every head: softmax, or sigmoid for multi-label."""
    blocks = _blocks(split)
    parts = []
    for start in range(0, len(blocks), chunk):
        z = grid.logits(grid.inputs(blocks[start : start + chunk]))
        parts.append(z.sigmoid() if task == "multilabel" else z.softmax(-1))
    probs = torch.cat(parts, dim=2)
    return {cfg: probs[vi, hi].double().numpy() for cfg, (vi, hi) in grid.slots.items()}


def run(
    data: ProtocolInput,
    lrs: Sequence[float] = DINOV2_LRS,
    n_blocks: Sequence[int] = (1, 4),
    avgpool: Sequence[bool] = (False, True),
    epochs: int = 10,
    min_iterations: int = 500,
    batch_size: int = 256,
    refit: bool = False,
) -> ProtocolResult:
    """Train the grid on train, select the best head on val, score test once.

    ``refit`` retrains the selected head on train + val before scoring test.
    """
    available = 1 if data.train.blocks is None else data.train.blocks.shape[1]
    nb = sorted({min(n, available) for n in n_blocks})
    configs = head_grid(lrs, nb, avgpool)
    kw = dict(epochs=epochs, min_iterations=min_iterations, batch_size=batch_size, seed=data.seed)
    grid = train_heads(data.train, data.task, data.num_classes, configs, **kw)
    val_scores = predict(grid, data.val, data.task)
    per_head = {c: validation_score(data.val.labels, s, data.task) for c, s in val_scores.items()}
    best = max(configs, key=lambda c: per_head[c])  # first of equals: grid order
    if refit:
        grid = train_heads(data.train.concat(data.val), data.task, data.num_classes, [best], **kw)
    test_scores = predict(grid, data.test, data.task)[best]
    d_in = grid.dims[(best.n_blocks, best.avgpool)]
    warnings = []
    if available < max(n_blocks):
        warnings.append(f"cache holds {available} block(s); n_last_blocks limited to {nb}")
    return ProtocolResult(
        scores=test_scores,
        hparams={
            "lrs": list(lrs),
            "n_last_blocks": nb,
            "avgpool": list(avgpool),
            "heads": len(configs),
            "epochs": epochs,
            "min_iterations": min_iterations,
            "batch_size": batch_size,
            "optimizer": "sgd momentum 0.9, wd 0, cosine, lr*batch/256",
            "refit": refit,
        },
        selected={
            **asdict(best),
            "val_score": per_head[best],
            "trainable_params": d_in * data.num_classes + data.num_classes,
        },
        warnings=warnings,
    )
