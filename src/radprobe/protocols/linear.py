"""Linear probing, DINOv2 style: a grid of linear heads trained at once on cached features.

The grid is learning rates x n_last_blocks x avgpool (13 x 2 x 2 = 52 heads by default). Every head
sees the same mini-batches; the gradient of every head's loss (:func:`head_losses`) comes from one
batched matmul in closed form, and a fused SGD step (momentum 0.9, no weight decay, cosine schedule,
lr scaled by batch/256) updates each head with its own learning rate. Multi-label BCE runs over
(heads x batch x classes) at once, and labels of -1 (unknown, e.g. CheXpert's uncertain=ignore) are
masked out of the loss. The best head is chosen on
validation only; the test split is scored once.

Several training sets (few-shot draws) train in the same pass: each has its own batches, seed and
heads, stacked along a leading dimension, so 25 draws cost one loop instead of 25.

When a training set has fewer samples than a variant has input dimensions, the heads train in the
row space of its inputs: SGD on a linear model only ever moves the weights along the training rows
(the gradient is X^T G), so with X^T = Q R the weights stay W0 + Q U, and training U on the n x n
inputs R^T (plus the fixed logit offset X W0) follows the very same trajectory at n/D of the cost.

A head's initial weights come from a generator seeded by (seed, its config), and the batch order
from ``seed`` alone, so each head of the grid trains exactly as it would alone.

``preset="paper"`` reproduces Baharoon et al. (arXiv 2312.02366; docs/paper-fidelity.md): 16 heads
(lr 1e-3, 5e-3, 1e-2, 5e-2 x last 1 or 4 blocks x avgpool), batch 128, 10 epochs of ceil(n / 128)
full batches from DINOv2's endless stream of permutations (``sampler="stream"``), learning rates
unscaled, heads chosen on val AUROC of sigmoid(logits), and the chosen head retrained on train + val.
As the released code does, multi-label heads minimise each sample's class-mean BCE summed (not
averaged) over the batch, and binary heads have a single logit. The paper trains on augmented views
(RandomResizedCrop(scale 0.75-1) + flip) of the images, drawn afresh on every pass over the data:
the preset reads ``train_views=11`` cached views of every training (and, for the refit, validation)
image, and pass p trains on view p (:mod:`radprobe.features.views`); 10 epochs of the stream make
11 passes over a set of at least 1,280 images. Heads are chosen and tested on the un-augmented
images, as the paper's eval transform gives them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from radprobe.core.sampling import stream_steps
from radprobe.metrics.fast import headline_scores
from radprobe.protocols.base import ProtocolInput, ProtocolResult, SplitFeatures
from radprobe.utils import digest

# Above this many bytes of stacked linear inputs, fused training sets train one by one instead.
PRECOMPUTE_BYTES = 1 << 30
DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
# Baharoon et al., dinov2/eval/classification/linear.py get_args_parser defaults: learning_rates,
# n_last_blocks, avgpools (its grid order), epochs, batch_size; no min iterations; retrained on
# train + val when a validation set is given (run_eval_linear).
PRESETS: dict[str, dict[str, Any]] = {
    "dinov2": {
        "lrs": DINOV2_LRS,
        "n_blocks": (1, 4),
        "avgpool": (False, True),
        "epochs": 10,
        "min_iterations": 500,
        "batch_size": 256,
        "refit": False,
        "train_views": 0,
        "sampler": "permutation",
    },
    "paper": {
        "lrs": (1e-3, 5e-3, 1e-2, 5e-2),
        "n_blocks": (1, 4),
        "avgpool": (True, False),
        "epochs": 10,
        "min_iterations": 0,
        "batch_size": 128,
        "refit": True,
        # DINOv2's InfiniteSampler (linear.py:508-512): full batches run on across passes, so 10
        # epochs of ceil(n / 128) batches make 11 passes over a set of >= 1,280 images (10 over a
        # set no larger than a batch); one view per pass, each pass its own draw, as the DataLoader
        "train_views": 11,
        "sampler": "stream",
    },
}
AUGMENTATION = "RandomResizedCrop(scale 0.75-1, ratio 3/4-4/3) + horizontal flip p=0.5, cached views"


def train_views(options: dict[str, Any]) -> int:
    """How many augmented views of each training image a run with ``options`` reads (0: none)."""
    preset = options.get("preset", "dinov2")
    if preset not in PRESETS:
        return 0  # refused with its own line when the run starts
    given = options.get("train_views")
    return int(PRESETS[preset]["train_views"] if given is None else given)


Variant = tuple[int, bool]


@dataclass(frozen=True)
class TrainRules:
    """How the heads' SGD is set beyond the grid.

    ``lr_scale``: each lr is multiplied by batch / 256 (DINOv2); False: used as given (the paper).
    ``multilabel_loss``: ``"mean"``, the mean BCE over the batch's known (sample, label) entries; or
    ``"sample_sum"``, each sample's mean BCE over its labels summed over the batch (the paper's code).
    """

    lr_scale: bool = True
    multilabel_loss: str = "mean"


@dataclass(frozen=True)
class HeadConfig:
    """One head of the grid: base learning rate and its input variant."""

    lr: float
    n_blocks: int
    avgpool: bool

    @property
    def variant(self) -> Variant:
        return (self.n_blocks, self.avgpool)


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


@dataclass
class LinearHeads:
    """Trained heads of one training set, per input variant: configs, weights (H, D, C), biases (H, C)."""

    heads: dict[Variant, tuple[list[HeadConfig], torch.Tensor, torch.Tensor]]

    @property
    def configs(self) -> list[HeadConfig]:
        return [c for cfgs, _, _ in self.heads.values() for c in cfgs]

    def input_dim(self, cfg: HeadConfig) -> int:
        return int(self.heads[cfg.variant][1].shape[1])


def _batches(
    n: int, bs: int, iterations: int, seed: int, sampler: str = "permutation"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(iterations, bs) sample indices and each one's pass over the data (which augmented view it
    reads). ``"permutation"``: reshuffled whenever fewer than ``bs`` remain, a pass being an epoch of
    ``ceil(n / bs)`` steps; ``"stream"``: DINOv2's InfiniteSampler, full batches cut from one endless
    stream of seeded permutations (``core.sampling.stream_steps``), a pass being one permutation."""
    if sampler == "stream":
        rows, passes = stream_steps(n, bs, iterations, seed)
        return torch.from_numpy(rows), torch.from_numpy(passes)
    gen = torch.Generator().manual_seed(seed)
    per_perm = n // bs
    rows = []
    while len(rows) * per_perm < iterations:
        rows.append(torch.randperm(n, generator=gen)[: per_perm * bs].view(per_perm, bs))
    epochs = torch.arange(iterations) // math.ceil(n / bs)
    return torch.cat(rows)[:iterations], epochs[:, None].expand(iterations, bs)


def passes_over(n: int, batch_size: int, iterations: int, sampler: str) -> int:
    """How many passes over ``n`` rows (views read) ``iterations`` steps of ``_batches`` make."""
    bs = min(batch_size, n)
    if sampler == "stream":
        return math.ceil(iterations * bs / n)
    return math.ceil(iterations / math.ceil(n / bs))


def _plan(n: int, epochs: int, min_iterations: int, batch_size: int) -> tuple[int, int]:
    bs = min(batch_size, n)
    return bs, max(epochs * math.ceil(n / bs), min_iterations)


def train_many(
    trains: Sequence[SplitFeatures],
    task: str,
    num_classes: int,
    configs: Sequence[HeadConfig],
    seeds: Sequence[int],
    *,
    epochs: int = 10,
    min_iterations: int = 500,
    batch_size: int = 256,
    momentum: float = 0.9,
    project: bool | None = None,
    rules: TrainRules = TrainRules(),
    sampler: str = "permutation",
) -> list[LinearHeads]:
    """Train the grid ``configs`` on every training set at once (one fused step per iteration).

    Training sets with the same number of iterations share one loop. ``project`` forces (True) or
    forbids (False) training in the row space of the inputs; by default it is used where it is
    cheaper (fewer samples than input dimensions). It does not change the result beyond rounding.
    """
    plans = [_plan(len(t), epochs, min_iterations, batch_size) for t in trains]
    out: list[LinearHeads | None] = [None] * len(trains)
    # sets with augmented views stream their own batches, one set per loop
    groups = [[i] for i, t in enumerate(trains) if t.views is not None]
    plain = [i for i, t in enumerate(trains) if t.views is None]
    for iterations in sorted({plans[i][1] for i in plain}):
        groups.append([i for i in plain if plans[i][1] == iterations])
    for members in groups:
        iterations = plans[members[0]][1]
        fused = _train_fused(
            [trains[i] for i in members],
            [plans[i][0] for i in members],
            [seeds[i] for i in members],
            task,
            num_classes,
            configs,
            iterations,
            momentum,
            project,
            rules,
            sampler,
        )
        for i, heads in zip(members, fused, strict=True):
            out[i] = heads
    return out  # type: ignore[return-value]


def train_heads(
    train: SplitFeatures,
    task: str,
    num_classes: int,
    configs: Sequence[HeadConfig],
    *,
    seed: int = 0,
    **kw,
) -> LinearHeads:
    """Train every head of ``configs`` in one pass over the cached features: one fused step per batch."""
    return train_many([train], task, num_classes, configs, [seed], **kw)[0]


@dataclass(frozen=True)
class _Grid:
    """What a fused run trains: the input variants, each one's heads, their input widths and classes."""

    variants: list[Variant]
    per_variant: list[list[HeadConfig]]
    dims: dict[Variant, int]
    classes: int
    project: bool | None

    @property
    def heads(self) -> int:
        """Heads per variant: the widest variant's count (the others are padded with inert heads)."""
        return max(len(h) for h in self.per_variant)

    def projected(self, n: int, v: Variant) -> bool:
        """Whether a set of ``n`` samples trains variant ``v`` in the row space of its inputs."""
        return self.project if self.project is not None else n < self.dims[v]


@dataclass
class _SetInputs:
    """One training set's tensors per variant: training inputs (projected or not; None when streamed),
    initial weights (H, D, C), and for projected variants the basis Q (D, n) and fixed logits X W0."""

    inputs: list[torch.Tensor | None]
    init: list[torch.Tensor]
    bases: list[torch.Tensor | None]
    offsets: list[torch.Tensor | None]


@dataclass
class _Stacked:
    """The fused problem, zero-padded and laid out (R, V, ...) over sets and variants."""

    x: torch.Tensor | None  # (R, V, N, D) inputs; None when streamed
    offset: torch.Tensor | None  # (R, V, H, C, N) fixed logits of projected variants; None if there are none
    w: torch.Tensor  # (R, V, D, H, C) initial weights of the trained coordinates
    y: torch.Tensor  # (R, N) labels, or (R, C, N) multi-label
    lr: torch.Tensor  # (R, V, H) learning rates, 0 for padded heads


@dataclass
class _BlockSource:
    """The blocks a streamed set reads at each step: its cached blocks, or with augmented ``views``
    each row's view of its pass over the data (pass p reads view p mod n)."""

    blocks: torch.Tensor
    views: list[np.ndarray] | None

    def rows(self, idx: torch.Tensor, passes: torch.Tensor) -> torch.Tensor:
        if self.views is None:
            return self.blocks[idx]
        which = (passes % len(self.views)).numpy()
        out = torch.empty((len(idx), *self.views[0].shape[1:]), dtype=torch.float32)
        for v in np.unique(which):
            pick = np.flatnonzero(which == v)
            out[pick] = torch.from_numpy(np.asarray(self.views[v][idx.numpy()[pick]], dtype=np.float32))
        return out


@dataclass
class _BatchPlan:
    """The rows each step reads: every set's whole training set in place (``full``), or ``idx``."""

    full: bool
    size: int  # batch slots per set
    slot: torch.Tensor  # (R, B): 1 where a set's batch has a sample, 0 in its padding
    idx: torch.Tensor  # (iterations, R, B) sample indices (unused when full)
    passes: torch.Tensor  # (iterations, R, B) each sample's pass over its set (the view it reads)


def _train_fused(
    trains: Sequence[SplitFeatures],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    task: str,
    num_classes: int,
    configs: Sequence[HeadConfig],
    iterations: int,
    momentum: float,
    project: bool | None,
    rules: TrainRules = TrainRules(),
    sampler: str = "permutation",
) -> list[LinearHeads]:
    """Train R sets' grids in one loop; tensors are laid out (R, V, ...) over sets and variants.

    Shorter sets and narrower variants are zero-padded: padded inputs give padded weights zero
    gradient, padded batch slots are masked out of the loss, and variants with fewer heads than the
    widest get inert heads (learning rate 0: they never move).
    """
    variants = sorted({c.variant for c in configs})
    per_variant = [[c for c in configs if c.variant == v] for v in variants]
    r_n, ns = len(trains), [len(t) for t in trains]
    views = trains[0].views if r_n == 1 else None
    blocks_all = [_blocks(t) for t in trains]
    dims = {v: linear_input(blocks_all[0][:1], *v).shape[1] for v in variants}
    # each step reads another view's rows, so inputs cannot be held projected
    grid = _Grid(variants, per_variant, dims, num_classes, False if views is not None else project)
    if r_n > 1 and 4 * len(variants) * max(dims.values()) * sum(ns) > PRECOMPUTE_BYTES:
        # too large to stack in memory: each set trains on its own
        return [
            heads
            for i in range(r_n)
            for heads in _train_fused(
                [trains[i]],
                [batch_sizes[i]],
                [seeds[i]],
                task,
                num_classes,
                configs,
                iterations,
                momentum,
                project,
                rules,
                sampler,
            )
        ]
    # A set trained alone whose inputs are not projected (n >= every width) streams its batches:
    # each step builds its rows' linear inputs from the cached blocks instead of holding them all.
    stream = r_n == 1 and not any(grid.projected(ns[0], v) for v in variants)
    source = _BlockSource(blocks_all[0], views)
    sets = [
        _set_inputs(blocks, seed, n, grid, stream)
        for blocks, seed, n in zip(blocks_all, seeds, ns, strict=True)
    ]
    # per (set, variant): the trained width (the sample count where projected, else the input width)
    widths = [
        [dims[v] if x is None else x.shape[1] for v, x in zip(variants, s.inputs, strict=True)] for s in sets
    ]
    x_all, offset, w = _stack_inputs(sets, widths, ns, grid, stream)
    y_all = _stack_labels(trains, task, num_classes, max(ns))
    stacked = _Stacked(x_all, offset, w, y_all, _learning_rates(grid, batch_sizes, rules.lr_scale))
    plan = _batch_plan(ns, batch_sizes, seeds, iterations, stream, sampler)
    loss = rules.multilabel_loss
    w_t, b = _fused_sgd(stacked, plan, grid, task, iterations, momentum, source, loss)
    return _unpack_heads(w_t, b, sets, widths, grid)


def _initial_weights(seed: int, heads: list[HeadConfig], h_n: int, dim: int, c_n: int) -> torch.Tensor:
    """(H, D, C) initial weights of one variant's heads, each from its own generator; padding stays 0."""
    w0 = torch.zeros(h_n, dim, c_n)
    for hi, cfg in enumerate(heads):
        g = torch.Generator().manual_seed(_init_seed(seed, cfg))
        w0[hi] = torch.randn(dim, c_n, generator=g) * 0.01  # DINOv2: N(0, 0.01), bias 0
    return w0


def _set_inputs(blocks: torch.Tensor, seed: int, n: int, grid: _Grid, stream: bool) -> _SetInputs:
    """One set's training inputs, initial weights and (where projected) QR basis, per variant."""
    out = _SetInputs([], [], [], [])
    for v, heads in zip(grid.variants, grid.per_variant, strict=True):
        w0 = _initial_weights(seed, heads, grid.heads, grid.dims[v], grid.classes)
        out.init.append(w0)
        x = None if stream else linear_input(blocks, *v)
        if x is not None and grid.projected(n, v):
            q, r = torch.linalg.qr(x.T.double())  # x = r^T q^T
            out.inputs.append(r.T.float())
            out.bases.append(q.float())
            out.offsets.append(torch.einsum("nd,hdc->nhc", x, w0))  # fixed logits X W0
        else:
            out.inputs.append(x)
            out.bases.append(None)
            out.offsets.append(None)
    return out


def _stack_inputs(
    sets: list[_SetInputs], widths: list[list[int]], ns: list[int], grid: _Grid, stream: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Zero-padded inputs (R, V, N, D), fixed logit offsets (R, V, H, C, N) and initial weights
    (R, V, D, H, C); the inputs are None when streamed, the offsets when no variant is projected."""
    r_n, v_n, h_n, c_n = len(sets), len(grid.variants), grid.heads, grid.classes
    d_n, n_max = max(max(ws) for ws in widths), max(ns)
    any_projected = any(q is not None for s in sets for q in s.bases)
    x_all = None if stream else torch.zeros(r_n, v_n, n_max, d_n)
    # logits are laid out (..., C, B) throughout
    offset = torch.zeros(r_n, v_n, h_n, c_n, n_max) if any_projected else None
    w = torch.zeros(r_n, v_n, d_n, h_n, c_n)
    for ri, s in enumerate(sets):
        for vi in range(v_n):
            x, off = s.inputs[vi], s.offsets[vi]
            if x_all is not None and x is not None:
                x_all[ri, vi, : ns[ri], : x.shape[1]] = x
            if off is None:
                w[ri, vi, : widths[ri][vi]] = s.init[vi].permute(1, 0, 2)
            else:
                assert offset is not None
                offset[ri, vi, :, :, : ns[ri]] = off.permute(1, 2, 0)
    return x_all, offset, w


def _learning_rates(grid: _Grid, batch_sizes: Sequence[int], scale: bool = True) -> torch.Tensor:
    """(R, V, H) learning rate of every head of every set; padded heads get 0."""
    lr = torch.zeros(len(batch_sizes), len(grid.variants), grid.heads)
    factor = torch.tensor([bs / 256 if scale else 1.0 for bs in batch_sizes])  # lr * batch / 256
    for vi, heads in enumerate(grid.per_variant):
        for hi, cfg in enumerate(heads):
            lr[:, vi, hi] = cfg.lr * factor
    return lr


def _stack_labels(trains: Sequence[SplitFeatures], task: str, c_n: int, n_max: int) -> torch.Tensor:
    """Zero-padded labels: (R, N), or (R, C, N) multi-label."""
    multilabel = task == "multilabel"
    y_all = torch.zeros((len(trains), c_n, n_max) if multilabel else (len(trains), n_max), dtype=torch.long)
    for ri, t in enumerate(trains):
        lab = torch.as_tensor(np.asarray(t.labels)).long()
        y_all[ri, ..., : len(t)] = lab.T if multilabel else lab
    return y_all


def _batch_plan(
    ns: list[int],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    iterations: int,
    stream: bool,
    sampler: str = "permutation",
) -> _BatchPlan:
    """Each set's batch slots and, unless every batch is the whole set, its seeded batch order."""
    # Every set trains on full batches (few-shot draws): a batch's loss is a mean, so its order does
    # not matter and each step reads all of x_all in place, with no gather.
    full = not stream and all(bs == n for bs, n in zip(batch_sizes, ns, strict=True))
    bs_max = max(ns) if full else max(batch_sizes)
    slot = torch.zeros(len(ns), bs_max)
    idx = torch.zeros(iterations, len(ns), bs_max, dtype=torch.long)
    passes = torch.zeros_like(idx)
    for ri, (n, bs, seed) in enumerate(zip(ns, batch_sizes, seeds, strict=True)):
        slot[ri, :bs] = 1.0
        if not full:
            idx[:, ri, :bs], passes[:, ri, :bs] = _batches(n, bs, iterations, seed, sampler)
    return _BatchPlan(full, bs_max, slot, idx, passes)


def _fused_sgd(
    st: _Stacked,
    plan: _BatchPlan,
    grid: _Grid,
    task: str,
    iterations: int,
    momentum: float,
    source: _BlockSource,
    multilabel_loss: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD with momentum on a cosine schedule; returns weights (RV, HC, D) and biases (R, V, H, C, 1).

    ``source`` gives the cached blocks a lone set reads when it streams its batches.
    """
    # SGD on linear heads needs no autograd: d(loss)/d(logits) has a closed form (softmax or sigmoid
    # minus the target, see _logit_grad) and the weight gradient is one bmm.
    r_n, v_n, d_n, h_n, c_n = st.w.shape
    rv, hc, bs_max = r_n * v_n, h_n * c_n, plan.size
    b = torch.zeros(r_n, v_n, h_n, c_n, 1)
    w_t = st.w.view(rv, d_n, hc).transpose(1, 2).contiguous()  # (RV, HC, D): logits = w_t @ x^T
    buf_w, buf_b = torch.zeros_like(w_t), torch.zeros_like(b)
    lr_w = st.lr.view(rv, h_n, 1).repeat_interleave(c_n, dim=1)  # (RV, HC, 1)
    lr_b = st.lr[..., None, None]
    xb = None if st.x is None else st.x.view(rv, st.y.shape[-1], d_n)
    off_b: torch.Tensor | float = 0.0 if st.offset is None else st.offset
    yb = st.y
    for it in range(iterations):
        if not plan.full:
            xb, off_b, yb = _gather_batch(st, plan.idx[it], grid, task, source, plan.passes[it, 0])
        assert xb is not None
        z = torch.bmm(w_t, xb.transpose(1, 2)).view(r_n, v_n, h_n, c_n, bs_max) + off_b + b
        # each head's own gradient
        g = _logit_grad(z, yb[:, None, None], task, plan.slot[:, None, None], multilabel_loss)
        scale = 0.5 * (1 + math.cos(math.pi * it / iterations))
        buf_w.mul_(momentum).add_(torch.bmm(g.view(rv, hc, bs_max), xb))
        w_t.sub_(lr_w * scale * buf_w)
        buf_b.mul_(momentum).add_(g.sum(-1, keepdim=True))
        b.sub_(lr_b * scale * buf_b)
    return w_t, b


def _gather_batch(
    st: _Stacked, bi: torch.Tensor, grid: _Grid, task: str, source: _BlockSource, passes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor]:
    """A step's inputs (RV, B, D), fixed logit offsets and labels at sample indices ``bi`` (R, B);
    ``passes``: the lone streamed set's pass of each sample (which augmented view it reads)."""
    r_n, v_n, d_n, h_n, c_n = st.w.shape
    bs_max = bi.shape[1]
    if st.x is None:  # streaming one set: its rows' inputs, from the cached blocks
        blk = source.rows(bi[0], passes)
        xb = torch.stack([F.pad(linear_input(blk, *v), (0, d_n - grid.dims[v])) for v in grid.variants])
    else:
        var_r, var = torch.arange(r_n)[:, None, None], torch.arange(v_n)[None, :, None]
        xb = st.x[var_r, var, bi[:, None]].view(r_n * v_n, bs_max, d_n)
    off_b: torch.Tensor | float = 0.0
    if st.offset is not None:
        off_b = st.offset.gather(-1, bi[:, None, None, None].expand(r_n, v_n, h_n, c_n, bs_max))
    if task == "multilabel":
        return xb, off_b, st.y.gather(-1, bi[:, None].expand(r_n, c_n, bs_max))
    return xb, off_b, st.y.gather(1, bi)


def _unpack_heads(
    w_t: torch.Tensor, b: torch.Tensor, sets: list[_SetInputs], widths: list[list[int]], grid: _Grid
) -> list[LinearHeads]:
    """Each set's trained heads per variant, mapped back from the row space where projected."""
    r_n, v_n, h_n, c_n, _ = b.shape
    d_n = w_t.shape[2]
    w = w_t.transpose(1, 2).reshape(r_n, v_n, d_n, h_n, c_n)
    out = []
    for ri, s in enumerate(sets):
        heads: dict[Variant, tuple[list[HeadConfig], torch.Tensor, torch.Tensor]] = {}
        for vi, (v, cfgs) in enumerate(zip(grid.variants, grid.per_variant, strict=True)):
            d = widths[ri][vi]
            u = w[ri, vi, :d, : len(cfgs)].permute(1, 0, 2)  # (H, d, C)
            q = s.bases[vi]
            weights = s.init[vi][: len(cfgs)] + torch.einsum("Dn,hnc->hDc", q, u) if q is not None else u
            heads[v] = (cfgs, weights.clone(), b[ri, vi, : len(cfgs), :, 0].clone())
        out.append(LinearHeads(heads))
    return out


def head_losses(
    logits: torch.Tensor,
    y: torch.Tensor,
    task: str,
    weight: torch.Tensor | None = None,
    multilabel_loss: str = "mean",
) -> torch.Tensor:
    """Per-head mean loss of logits (..., B, C): cross-entropy, or BCE over all labels at once.

    ``y`` (B,) or multi-label (B, C) broadcasts over the leading head axes. ``weight`` (..., B)
    masks samples (batch padding); multi-label entries of -1 (unknown) are left out of the mean.
    ``multilabel_loss="sample_sum"``: BCE summed over the batch and divided by the number of labels.
    """
    if task == "multilabel":
        y = y.transpose(-1, -2)
    return _losses(logits.transpose(-1, -2), y, task, weight, multilabel_loss)


def _logit_grad(
    z: torch.Tensor, y: torch.Tensor, task: str, weight: torch.Tensor, multilabel_loss: str = "mean"
) -> torch.Tensor:
    """Gradient of :func:`_losses` (summed over heads) with respect to logits z laid out (..., C, B)."""
    if task == "multilabel":
        known = ((y >= 0).float() * weight[..., None, :]).expand_as(z)
        count = _bce_count(known, multilabel_loss)
        return (torch.sigmoid(z) - y.clamp(min=0).float()) * known / count
    onehot = (torch.arange(z.shape[-2])[:, None] == y.unsqueeze(-2)).float()
    return (torch.softmax(z, -2) - onehot) * (weight / weight.sum(-1, keepdim=True))[..., None, :]


def _bce_count(known: torch.Tensor, multilabel_loss: str) -> torch.Tensor | float:
    """What a head's summed multi-label BCE (known entries (..., C, B)) is divided by."""
    if multilabel_loss == "sample_sum":
        # the paper's code: sum over the batch of each sample's BCE summed over labels / labels
        return float(known.shape[-2])
    if multilabel_loss != "mean":
        raise ValueError(f"multilabel_loss must be 'mean' or 'sample_sum', got {multilabel_loss!r}")
    return known.sum(dim=(-2, -1), keepdim=True).clamp(min=1)


def _losses(
    z: torch.Tensor, y: torch.Tensor, task: str, weight: torch.Tensor | None, multilabel_loss: str = "mean"
) -> torch.Tensor:
    """:func:`head_losses` on logits laid out (..., C, B): reductions over C then run along B."""
    if task == "multilabel":
        known = (y >= 0).float() if weight is None else (y >= 0).float() * weight[..., None, :]
        known = known.expand_as(z)
        target = y.clamp(min=0).float().expand_as(z)
        per = F.binary_cross_entropy_with_logits(z, target, reduction="none") * known
        count = _bce_count(known, multilabel_loss)
        if not isinstance(count, float):
            count = count[..., 0, 0]
        return per.sum(dim=(-2, -1)) / count
    shape = z.shape[:-2] + z.shape[-1:]
    # log-sum-exp minus the target logit: cross-entropy without flattening (heads, batch) into rows
    per = torch.logsumexp(z, -2) - z.gather(-2, y.expand(shape).unsqueeze(-2)).squeeze(-2)
    if weight is None:
        return per.mean(-1)
    weight = weight.expand(shape)
    return (per * weight).sum(-1) / weight.sum(-1)


@torch.no_grad()
def predict(
    heads: LinearHeads, split: SplitFeatures, task: str, chunk: int = 4096, activation: str | None = None
) -> dict[HeadConfig, np.ndarray]:
    """Scores (N, C) of every head: softmax, or sigmoid for multi-label (``activation`` forces one)."""
    blocks = _blocks(split)
    sigmoid = (activation or ("sigmoid" if task == "multilabel" else "softmax")) == "sigmoid"
    out: dict[HeadConfig, np.ndarray] = {}
    for v, (cfgs, w, b) in heads.heads.items():
        parts = []
        for start in range(0, len(blocks), chunk):
            z = torch.einsum("nd,hdc->hnc", linear_input(blocks[start : start + chunk], *v), w) + b[:, None]
            parts.append(z.sigmoid() if sigmoid else z.softmax(-1))
        probs = torch.cat(parts, dim=1)
        out.update({c: probs[hi].double().numpy() for hi, c in enumerate(cfgs)})
    return {c: out[c] for c in heads.configs}


def run(
    data: ProtocolInput,
    lrs: Sequence[Annotated[float, Gt(0)]] | None = None,
    n_blocks: Sequence[Annotated[int, Ge(1)]] | None = None,
    avgpool: Sequence[bool] | None = None,
    epochs: Annotated[int, Ge(1)] | None = None,
    min_iterations: Annotated[int, Ge(0)] | None = None,
    batch_size: Annotated[int, Ge(1)] | None = None,
    refit: bool | None = None,
    train_views: Annotated[int, Ge(0)] | None = None,
    sampler: Literal["permutation", "stream"] | None = None,
    preset: str = "dinov2",
) -> ProtocolResult:
    """Train the grid on train, select the best head on val, score test once.

    ``refit`` retrains the selected head on train + val before scoring test. ``train_views``: train
    on that many cached augmented views of each image (``data.train.views``, and ``data.val.views``
    for the refit; 0: the images themselves; pass p over the data reads view p mod n). ``sampler``:
    ``"permutation"`` (a reshuffle whenever fewer than a batch remain) or ``"stream"`` (DINOv2's
    InfiniteSampler). Options left unset take the ``preset``'s value (``PRESETS``: ``dinov2``, the
    default, or ``paper``).
    """
    kw = dict(
        epochs=epochs,
        min_iterations=min_iterations,
        batch_size=batch_size,
        refit=refit,
        train_views=train_views,
        sampler=sampler,
        preset=preset,
    )
    return run_many([data], lrs, n_blocks, avgpool, **kw)[0]


@dataclass(frozen=True)
class _HeadView:
    """How a preset's heads see the task: what they train as, their activation, SGD rules and the
    validation score that picks a head."""

    task: str  # the task the heads train as
    outputs: int
    activation: str | None  # None: softmax, or sigmoid for multi-label
    rules: TrainRules
    one_logit: bool  # binary heads with a single logit (trained as one multi-label output)
    selection: str  # "headline": the task's headline metric; "auroc": (macro) AUROC of the scores

    @classmethod
    def of(cls, task: str, num_classes: int, preset: str) -> _HeadView:
        if preset != "paper":
            return cls(task, num_classes, None, TrainRules(), False, "headline")
        # the paper's code: no lr scaling; multi-label BCE summed over the batch; one logit for binary
        # tasks; sigmoid on every head's logits; heads chosen on validation AUROC (val_metric_type)
        rules = TrainRules(lr_scale=False, multilabel_loss="sample_sum" if task == "multilabel" else "mean")
        if task == "binary":
            return cls("multilabel", 1, "sigmoid", rules, True, "auroc")
        return cls(task, num_classes, "sigmoid", rules, False, "auroc")

    def split(self, s: SplitFeatures) -> SplitFeatures:
        """``s`` as the heads train on it: binary labels become one multi-label column."""
        if not self.one_logit:
            return s
        return SplitFeatures(s.features, np.asarray(s.labels)[:, None], s.groups, s.blocks, s.bags, s.views)

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """Scores (N, C) of the task from a head's outputs."""
        return np.concatenate([1 - probs, probs], 1) if self.one_logit else probs

    def val_scores(self, labels: np.ndarray, probs: np.ndarray, task: str) -> np.ndarray:
        """The selection score of every head's validation outputs ``probs`` (H, N, outputs)."""
        y = np.asarray(labels)
        if self.selection == "headline":
            return headline_scores(y, probs, task)
        if task == "binary":
            return headline_scores(y[:, None], probs, "multilabel")
        if task == "multiclass":  # one-vs-rest macro AUROC of each class's score
            return headline_scores(np.eye(probs.shape[-1], dtype=int)[y], probs, "multilabel")
        return headline_scores(y, probs, task)


def _resolve(preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of a run: those given, the ``preset``'s for the rest."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return {k: PRESETS[preset][k] if given.get(k) is None else given[k] for k in PRESETS[preset]}


def run_many(
    inputs: Sequence[ProtocolInput],
    lrs: Sequence[float] | None = None,
    n_blocks: Sequence[int] | None = None,
    avgpool: Sequence[bool] | None = None,
    epochs: int | None = None,
    min_iterations: int | None = None,
    batch_size: int | None = None,
    refit: bool | None = None,
    train_views: int | None = None,
    sampler: str | None = None,
    preset: str = "dinov2",
) -> list[ProtocolResult]:
    """:func:`run` on several inputs of one task (few-shot draws), their grids trained in one pass.

    Each input keeps its own seed, selection and refit; results come back in input order.
    """
    given = dict(lrs=lrs, n_blocks=n_blocks, avgpool=avgpool, epochs=epochs, refit=refit)
    extra = {
        "min_iterations": min_iterations,
        "batch_size": batch_size,
        "train_views": train_views,
        "sampler": sampler,
    }
    o = _resolve(preset, {**given, **extra})
    inputs = [_with_views(d, o["train_views"], o["refit"]) for d in inputs]
    first = inputs[0]
    view = _HeadView.of(first.task, first.num_classes, preset)
    available = min(1 if d.train.blocks is None else d.train.blocks.shape[1] for d in inputs)
    nb = sorted({min(n, available) for n in o["n_blocks"]})
    no_blocks = any(_single_vector(d.train) for d in inputs)
    if preset == "paper" and no_blocks and avgpool is None:
        # one vector per image (CNNs, SAM, BiomedCLIP): the paper's grid for them is 1 block without
        # avgpool; with it, a head would read the same vector twice
        o["avgpool"] = (False,)
    configs = head_grid(o["lrs"], nb, o["avgpool"])
    kw = dict(
        epochs=o["epochs"],
        min_iterations=o["min_iterations"],
        batch_size=o["batch_size"],
        rules=view.rules,
        sampler=o["sampler"],
    )
    seeds = [d.seed for d in inputs]
    grids = train_many([view.split(d.train) for d in inputs], view.task, view.outputs, configs, seeds, **kw)
    bests = []
    for data, grid in zip(inputs, grids, strict=True):
        val = predict(grid, data.val, view.task, activation=view.activation)
        scores = view.val_scores(data.val.labels, np.stack([val[c] for c in configs]), data.task)
        best = int(np.argmax(scores))  # first of equals: grid order
        bests.append((configs[best], float(scores[best])))
    if o["refit"]:
        grids = train_many(
            [view.split(d.train.concat(d.val)) for d in inputs],
            view.task,
            view.outputs,
            list(dict.fromkeys(best for best, _ in bests)),
            seeds,
            **kw,
        )
        # each input trains only its own selected head
        grids = [_only(g, best) for g, (best, _) in zip(grids, bests, strict=True)]
    hparams = _hparams(o, nb, len(configs), preset, view)
    results = []
    for data, grid, (best, val_score) in zip(inputs, grids, bests, strict=True):
        test_scores = view.scores(predict(grid, data.test, view.task, activation=view.activation)[best])
        warnings = []
        if available < max(o["n_blocks"]):
            warnings.append(f"cache holds {available} block(s); n_last_blocks limited to {nb}")
        if preset == "paper" and no_blocks and avgpool is None:
            warnings.append(
                "cache holds one vector per image; avgpool limited to [False] (the paper's CNN grid)"
            )
        warnings += _view_reuse(data, o)
        results.append(
            ProtocolResult(
                scores=test_scores,
                hparams=dict(hparams),
                selected={
                    **asdict(best),
                    "val_score": val_score,
                    "trainable_params": grid.input_dim(best) * view.outputs + view.outputs,
                },
                warnings=warnings,
            )
        )
    return results


def _view_reuse(data: ProtocolInput, o: dict[str, Any]) -> list[str]:
    """One line when a training set makes more passes than it has views (a later pass then reads an
    earlier pass's view again: the same crop of that image, where the paper would draw afresh)."""
    n_views = o["train_views"]
    if not n_views:
        return []
    sets = [("train", len(data.train))] + (
        [("train+val", len(data.train) + len(data.val))] if o["refit"] else []
    )
    lines = []
    for name, n in sets:
        bs, iterations = _plan(n, o["epochs"], o["min_iterations"], o["batch_size"])
        passes = passes_over(n, bs, iterations, o["sampler"])
        if passes > n_views:
            lines.append(
                f"{name}: {passes} passes over {n} rows read {n_views} views; passes {n_views}+ reuse "
                f"earlier views (train_views={passes} gives each pass its own)"
            )
    return lines


def _single_vector(split: SplitFeatures, probe: int = 64) -> bool:
    """Whether the cache holds one vector per image: no blocks, or one block whose class token and
    patch mean are the same vector (backbones without tokens give their one vector as both)."""
    if split.blocks is None:
        return True
    if split.blocks.shape[1] != 1:
        return False
    head = np.asarray(split.blocks[:probe])
    return bool(np.array_equal(head[:, 0, 0], head[:, 0, 1]))


def _with_views(data: ProtocolInput, n: int, refit: bool) -> ProtocolInput:
    """``data`` with the first ``n`` augmented views of train (and of val, for a refit) kept, or
    none when ``n`` is 0; fewer views than ``n`` is an error."""

    def keep(s: SplitFeatures, need: bool) -> SplitFeatures:
        if n and need and (s.views is None or len(s.views) < n):
            have = 0 if s.views is None else len(s.views)
            raise ValueError(f"train_views={n}: the features hold {have} augmented views of each image")
        views = s.views[:n] if n and need and s.views is not None else None
        return SplitFeatures(s.features, s.labels, s.groups, s.blocks, s.bags, views)

    return ProtocolInput(
        keep(data.train, True), keep(data.val, refit), data.test, data.task, data.num_classes, data.seed
    )


def _hparams(o: dict[str, Any], nb: list[int], heads: int, preset: str, view: _HeadView) -> dict[str, Any]:
    """A run's hparams; the default preset's keys are those runs have always had."""
    out = {
        "lrs": list(o["lrs"]),
        "n_last_blocks": nb,
        "avgpool": list(o["avgpool"]),
        "heads": heads,
        "epochs": o["epochs"],
        "min_iterations": o["min_iterations"],
        "batch_size": o["batch_size"],
        "optimizer": "sgd momentum 0.9, wd 0, cosine, lr*batch/256",
        "refit": o["refit"],
    }
    if o["train_views"]:  # un-augmented runs keep the keys they always had
        out |= {"train_views": o["train_views"], "augmentation": AUGMENTATION}
    if o["sampler"] != "permutation":
        out["sampler"] = o["sampler"]
    if preset == "dinov2":
        return out
    loss = {
        "sample_sum": "bce: per-sample mean over labels, summed over the batch",
        "mean": "bce, one logit" if view.one_logit else "cross-entropy",
    }[view.rules.multilabel_loss]
    return {
        **out,
        "optimizer": "sgd momentum 0.9, wd 0, cosine, lr unscaled",
        "preset": preset,
        "loss": loss,
        "selection": "val auroc of sigmoid(logits)",
    }


def _only(heads: LinearHeads, cfg: HeadConfig) -> LinearHeads:
    cfgs, w, b = heads.heads[cfg.variant]
    i = cfgs.index(cfg)
    return LinearHeads({cfg.variant: ([cfg], w[i : i + 1], b[i : i + 1])})
