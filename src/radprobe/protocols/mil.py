"""Attention-based multiple-instance learning over cached slice features (Ilse et al., 2018).

A volume is a bag of its slices' class tokens h_k. A gated attention head weighs them,
``a_k = softmax_k(wᵀ(tanh(V h_k) ⊙ sigmoid(U h_k)))``, and a linear classifier scores the
attention-weighted mean ``Σ a_k h_k``: a finding visible on a few slices is not diluted as it is by
mean pooling. Multi-label heads attend once per label (the findings of a volume may lie on different
slices); the other tasks share one attention. Slice features are standardised with train-slice
statistics, and dropout on them during training keeps the attention from memorising small training
sets. One head is trained per learning rate (AdamW, cosine schedule) and checkpointed after every
epoch (at most 50 times); the (learning rate, step) with the best validation score is kept and test
is scored once. Weights and dropout masks come from a generator seeded by (seed, lr) and the batch
order from ``seed``, so a CPU run is reproducible. Multi-label labels of -1 (unknown) add no loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Lt
from torch import nn

from radprobe.errors import RadprobeError
from radprobe.metrics.fast import validation_score
from radprobe.protocols.base import Bags, ProtocolInput, ProtocolResult
from radprobe.utils import digest

DEFAULT_LRS = (3e-4, 1e-3, 3e-3)
MAX_CHECKPOINTS = 50  # validation passes per learning rate


class GatedAttentionMIL(nn.Module):
    """Gated attention pooling of a bag of D-dim instances, then a linear classifier.

    With ``branches`` > 1 (multi-label: one per label) each output attends to the slices on its own,
    so findings seen on different slices of one volume are each pooled from their slices.
    """

    def __init__(self, dim: int, hidden: int, num_outputs: int, branches: int = 1) -> None:
        super().__init__()
        if branches not in (1, num_outputs):
            raise ValueError("branches must be 1 or one per output")
        self.attn_v = nn.Linear(dim, hidden)
        self.attn_u = nn.Linear(dim, hidden)
        # no bias: the softmax over a bag cancels any constant added to every slice
        self.attn_w = nn.Linear(hidden, branches, bias=False)
        self.classifier = nn.Linear(dim, num_outputs)

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, branches, S) attention weights of padded bags x (B, S, D); padded slices get 0."""
        a = self.attn_w(torch.tanh(self.attn_v(x)) * torch.sigmoid(self.attn_u(x))).transpose(1, 2)
        return a.masked_fill(~mask[:, None], -float("inf")).softmax(-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, num_outputs) logits."""
        z = self.attention(x, mask) @ x  # (B, branches, D)
        if z.shape[1] == 1:
            return self.classifier(z[:, 0])
        return (z * self.classifier.weight).sum(-1) + self.classifier.bias

    def attention_params(self) -> int:
        """Parameters of the attention head (V, U, w), without the classifier."""
        return sum(p.numel() for m in (self.attn_v, self.attn_u, self.attn_w) for p in m.parameters())


def _tensor_bags(bags: Bags, mean: torch.Tensor, std: torch.Tensor) -> list[torch.Tensor]:
    x = (torch.from_numpy(np.array(bags.features, dtype=np.float32)) - mean) / std
    return list(torch.split(x, bags.sizes.tolist()))


def _pad(bags: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x = nn.utils.rnn.pad_sequence(bags, batch_first=True)
    sizes = torch.tensor([len(b) for b in bags])
    return x, torch.arange(x.shape[1])[None] < sizes[:, None]


def _loss(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "multilabel":
        known = (y != -1).float()
        per = F.binary_cross_entropy_with_logits(logits, y.clamp_min(0).float(), reduction="none")
        return (per * known).sum() / known.sum().clamp_min(1)
    return F.cross_entropy(logits, y.long())


def _init_seed(seed: int, lr: float) -> int:
    return int(digest({"seed": seed, "mil_lr": lr}, 15), 16)


def train_mil(
    bags: list[torch.Tensor],
    labels: np.ndarray,
    task: str,
    num_classes: int,
    lr: float,
    *,
    hidden: int = 128,
    epochs: int = 50,
    min_steps: int = 500,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    dropout: float = 0.25,
    seed: int = 0,
    on_epoch: Callable[[GatedAttentionMIL, int], None] | None = None,
) -> GatedAttentionMIL:
    """Train one gated-attention MIL head on standardised bags.

    ``on_epoch(model, step)`` is called (in eval mode) after every pass over the training bags, at
    most ``MAX_CHECKPOINTS`` times (tiny sets run many passes), and at the end, e.g. to checkpoint on
    validation.
    """
    y = torch.as_tensor(np.asarray(labels))
    n = len(bags)
    bs = min(batch_size, n)
    per_epoch = math.ceil(n / bs)
    steps = max(epochs * per_epoch, min_steps)
    every = max(per_epoch, math.ceil(steps / MAX_CHECKPOINTS))
    order = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=order), 0
    # a forked, seeded global generator draws the weights and dropout masks: a run neither depends
    # on nor disturbs the caller's random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_init_seed(seed, lr))
        branches = num_classes if task == "multilabel" else 1
        model = GatedAttentionMIL(bags[0].shape[1], hidden, num_classes, branches)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1 + math.cos(math.pi * it / steps)))
        for step in range(1, steps + 1):
            model.train()
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=order), 0
            idx = perm[pos : pos + bs].tolist()
            pos += bs
            x, mask = _pad([bags[i] for i in idx])
            loss = _loss(model(F.dropout(x, dropout), mask), y[idx], task)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if on_epoch is not None and (step % every == 0 or step == steps):
                on_epoch(model.eval(), step)
    return model.eval()


@torch.no_grad()
def predict_mil(model: GatedAttentionMIL, bags: list[torch.Tensor], task: str, chunk: int = 64) -> np.ndarray:
    """Scores (N, C): softmax, or sigmoid for multi-label."""
    parts = []
    for start in range(0, len(bags), chunk):
        z = model(*_pad(bags[start : start + chunk]))
        parts.append(z.sigmoid() if task == "multilabel" else z.softmax(-1))
    return torch.cat(parts).double().numpy()


def run(
    data: ProtocolInput,
    lrs: Sequence[Annotated[float, Gt(0)]] = DEFAULT_LRS,
    hidden: Annotated[int, Ge(1)] = 128,
    epochs: Annotated[int, Ge(1)] = 50,
    min_steps: Annotated[int, Ge(0)] = 500,
    batch_size: Annotated[int, Ge(1)] = 16,
    weight_decay: Annotated[float, Ge(0)] = 1e-4,
    dropout: Annotated[float, Ge(0), Lt(1)] = 0.25,
) -> ProtocolResult:
    """Train one attention-MIL head per learning rate, select (lr, step) on val, score test once."""
    if any(s.bags is None for s in (data.train, data.val, data.test)):
        raise RadprobeError(
            "protocol mil needs a 3D dataset: it attends over each volume's slice features, and this "
            "dataset has one image per sample"
        )
    lrs = sorted({float(lr) for lr in lrs})
    if not lrs or any(lr <= 0 for lr in lrs):
        raise ValueError(f"lrs must be positive learning rates, got {lrs}")
    if hidden < 1 or batch_size < 1 or epochs < 0 or min_steps < 0 or max(epochs, min_steps) < 1:
        raise ValueError("hidden and batch_size must be >= 1, epochs and min_steps >= 0, one of them >= 1")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    train_slices = torch.from_numpy(np.array(data.train.bags.features, dtype=np.float32))
    mean, std = train_slices.mean(0), train_slices.std(0).clamp_min(1e-6)
    tr, va, te = (_tensor_bags(s.bags, mean, std) for s in (data.train, data.val, data.test))
    kw = dict(
        hidden=hidden,
        epochs=epochs,
        min_steps=min_steps,
        batch_size=batch_size,
        weight_decay=weight_decay,
        dropout=dropout,
        seed=data.seed,
    )
    per_lr: dict[float, tuple[float, int]] = {}  # lr -> (best val score, its step)
    best: tuple[float, float, int] | None = None  # (val score, lr, step)
    best_model: GatedAttentionMIL | None = None
    for lr in lrs:

        def checkpoint(model: GatedAttentionMIL, step: int, lr: float = lr) -> None:
            nonlocal best, best_model
            v = validation_score(data.val.labels, predict_mil(model, va, data.task), data.task)
            if lr not in per_lr or v > per_lr[lr][0]:  # first of equals: the earliest epoch
                per_lr[lr] = (v, step)
            if best is None or v > best[0]:  # ... and the smallest lr
                best, best_model = (v, lr, step), copy.deepcopy(model)

        train_mil(tr, data.train.labels, data.task, data.num_classes, lr, on_epoch=checkpoint, **kw)
    assert best is not None and best_model is not None
    return ProtocolResult(
        scores=predict_mil(best_model, te, data.task),
        hparams={
            "lrs": lrs,
            "hidden": hidden,
            "epochs": epochs,
            "min_steps": min_steps,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "dropout": dropout,
            "optimizer": "adamw, cosine, val checkpoints per epoch (<= 50)",
            "pool": "gated-attention" + (", one branch per label" if data.task == "multilabel" else ""),
            "features": "cls per slice, standardised on train",
        },
        selected={
            "lr": best[1],
            "step": best[2],
            "val_score": best[0],
            "val_scores": {str(lr): v for lr, (v, _) in per_lr.items()},
            "attention_params": best_model.attention_params(),
            "trainable_params": sum(p.numel() for p in best_model.parameters()),
        },
    )
