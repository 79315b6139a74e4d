"""Linear probing, DINOv2 style: a grid of linear heads trained at once on cached features.

The grid is learning rates x n_last_blocks x avgpool (13 x 2 x 2 = 52 heads by default). Every head
sees the same mini-batches; the heads' losses are summed into one backward pass, and a fused SGD
step (momentum 0.9, no weight decay, cosine schedule, lr scaled by batch/256) updates each head with
its own learning rate. Heads sharing an input variant are stored as one (H, D_in, C) tensor, so a
step is one batched matmul per variant, and multi-label BCE runs over (heads x batch x classes) at
once. The best head is chosen on validation only; the test split is scored once.

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


class _Group:
    """Heads sharing an input variant: weights (H, D_in, C), biases (H, C), momentum buffers."""

    def __init__(self, configs: list[HeadConfig], d_in: int, num_classes: int, seed: int) -> None:
        self.configs = configs
        ws = []
        for cfg in configs:
            g = torch.Generator().manual_seed(_init_seed(seed, cfg))
            ws.append(torch.randn(d_in, num_classes, generator=g) * 0.01)  # DINOv2: N(0, 0.01), bias 0
        self.w = torch.stack(ws).requires_grad_()
        self.b = torch.zeros(len(configs), num_classes, requires_grad=True)
        self.lr = torch.tensor([c.lr for c in configs])
        self.buf_w = torch.zeros_like(self.w)
        self.buf_b = torch.zeros_like(self.b)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,hdc->hbc", x, self.w) + self.b[:, None]

    @torch.no_grad()
    def step(self, scale: float, momentum: float) -> None:
        for p, buf in ((self.w, self.buf_w), (self.b, self.buf_b)):
            buf.mul_(momentum).add_(p.grad)
            lr = (self.lr * scale).view(-1, *([1] * (p.ndim - 1)))
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
) -> list[_Group]:
    """Train every head of ``configs`` in one pass over the cached features."""
    blocks = _blocks(train)
    y = torch.as_tensor(np.asarray(train.labels)).long()
    n = len(y)
    bs = min(batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    iterations = max(epochs * steps_per_epoch, min_iterations)
    lr_scale = bs / 256  # DINOv2: lr = base_lr * batch / 256
    variants = sorted({(c.n_blocks, c.avgpool) for c in configs})
    inputs = {v: linear_input(blocks, *v) for v in variants}
    groups = {
        v: _Group([c for c in configs if (c.n_blocks, c.avgpool) == v], inputs[v].shape[1], num_classes, seed)
        for v in variants
    }
    order_gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=order_gen)
    pos = 0
    for it in range(iterations):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=order_gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        scale = lr_scale * 0.5 * (1 + math.cos(math.pi * it / iterations))
        total = sum(head_losses(g.logits(inputs[v][idx]), y[idx], task).sum() for v, g in groups.items())
        total.backward()  # heads are independent: the summed loss gives each head its own gradient
        for g in groups.values():
            g.step(scale, momentum)
    return list(groups.values())


@torch.no_grad()
def predict(groups: list[_Group], split: SplitFeatures, task: str) -> dict[HeadConfig, np.ndarray]:
    """Scores (N, C) of every head: softmax, or sigmoid for multi-label."""
    blocks = _blocks(split)
    out: dict[HeadConfig, np.ndarray] = {}
    for g in groups:
        v = (g.configs[0].n_blocks, g.configs[0].avgpool)
        logits = g.logits(linear_input(blocks, *v))
        probs = logits.sigmoid() if task == "multilabel" else logits.softmax(-1)
        for cfg, p in zip(g.configs, probs, strict=True):
            out[cfg] = p.double().numpy()
    return out


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
    groups = train_heads(data.train, data.task, data.num_classes, configs, **kw)
    val_scores = predict(groups, data.val, data.task)
    per_head = {c: validation_score(data.val.labels, s, data.task) for c, s in val_scores.items()}
    best = max(configs, key=lambda c: per_head[c])  # first of equals: grid order
    if refit:
        groups = train_heads(data.train.concat(data.val), data.task, data.num_classes, [best], **kw)
    test_scores = predict([g for g in groups if best in g.configs], data.test, data.task)[best]
    d_in = linear_input(_blocks(data.val.subset(np.arange(1))), best.n_blocks, best.avgpool).shape[1]
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
