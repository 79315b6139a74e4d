"""Every learning rate of a sweep trained in one pass, and the refit on train + val.

Baharoon et al. train one head per learning rate side by side on the same batches, with one SGD
optimizer (one parameter group per head) and the sum of the heads' Dice losses
(``eval/segmentation/segmentation.py:309-319``, ``utils.py:160-187``). :func:`train_fused` does the
same on cached grids: the K heads run as one module (``fused_forward`` of the head class: one
matmul with K x classes outputs, or grouped convs), and the K Dice losses and their gradient are
computed together, image by image (:func:`upsampled_dice_loss`). Each head keeps its own parameters
and parameter group, and the heads do not interact (the loss is a sum, SGD is per element), so K
heads trained fused end where each trained alone would (``tests/segmentation/test_seg_fused.py``).
The fetch, the augmentation draw and the bookkeeping are shared by the K heads; the cost that grows
with K is the per-pixel softmax and Dice work on K x classes full-size maps (bench/seg_sweep.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radprobe.core.runtime import peak_memory_mb
from radprobe.core.sampling import stream_steps
from radprobe.metrics.segmentation import split_dice
from radprobe.segmentation import online as online_mod
from radprobe.segmentation.heads import count_trainable
from radprobe.segmentation.train import (
    Fetch,
    Inputs,
    Predictor,
    TrainStats,
    concat_fetch,
    precise_bn,
    predict,
    to_labels,
    upsampling,
)

SMOOTH = 1e-5  # MONAI DiceLoss's smooth_nr = smooth_dr default


@dataclass(frozen=True)
class FusedSettings:
    """SGD with momentum, a per-step cosine schedule to 0, one learning rate per head."""

    lrs: tuple[float, ...]
    epochs: int
    min_steps: int
    batch_size: int
    seed: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: bool = True  # turns of the cached grids (the ``augment="grids"`` approximation)
    device: str = "cpu"
    sampler: str = "epoch"  # "epoch": a permutation per pass; "stream": DINOv2's InfiniteSampler
    # True: BatchNorm statistics averaged exactly over the training rows after training (radprobe);
    # False: the running averages (momentum 0.1) of the training batches, as the released heads keep
    precise_bn: bool = True


# the released augmentation through the backbone: (rows, pass of each row, targets) -> inputs, targets
Online = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[Inputs, torch.Tensor]]


class _SoftmaxDice(torch.autograd.Function):
    """Sum over heads of the mean over (image, class) of 1 - (2 I + s) / (G + P + s), with I and P
    the softmax's overlap with the one-hot target and its total; one matmul gives both, and the
    backward is the loss's closed-form gradient through one softmax backward (fewer full-size passes
    over the K x C maps than autograd's graph)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, oh2: torch.Tensor) -> torch.Tensor:
        # z (B, C, K, N) logits; oh2 (B, C, N, 2): the one-hot target and ones
        p = z.softmax(1)
        r = torch.matmul(p, oh2)  # (B, C, K, 2): overlap I and total P of every class and head
        den = oh2[..., 0].sum(-1, keepdim=True) + r[..., 1] + SMOOTH
        num = 2.0 * r[..., 0] + SMOOTH
        ctx.save_for_backward(p, oh2, den, num)
        return (1.0 - num / den).mean((0, 1)).sum()

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[torch.Tensor, None]:
        p, oh2, den, num = ctx.saved_tensors
        n = p.shape[0] * p.shape[1]
        # d loss / d p = a * onehot + b, with a = dL/dI and b = dL/dP per (image, class, head)
        coef = torch.stack([-2.0 / (den * n), num / (den * den * n)], -1) * gout
        gp = torch.matmul(coef, oh2.transpose(-1, -2))
        return torch._softmax_backward_data(gp, p, 1, p.dtype), None


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over K heads of MONAI's ``DiceLoss(softmax=True, to_onehot_y=True)`` with its defaults
    (background included, Dice per image and class, then the mean): ``logits`` (B, C, K, H, W),
    class-major so each head's softmax runs over a strided axis and the pixel sums are matmuls;
    ``target`` (B, H, W) class indices."""
    B, C, K = logits.shape[:3]
    N = logits.shape[-1] * logits.shape[-2]
    oh = (target.view(B, 1, N) == torch.arange(C, device=target.device).view(1, C, 1)).to(logits.dtype)
    return _SoftmaxDice.apply(logits.reshape(B, C, K, N), torch.stack([oh, torch.ones_like(oh)], -1))


_MATRICES: dict[tuple[int, int, str, str, torch.dtype], torch.Tensor] = {}


def _interp_matrix(n: int, size: int, mode: str, like: torch.Tensor) -> torch.Tensor:
    """(size, n): F.interpolate's 1D operator along one axis (align_corners=False), read off the
    identity, so ``A @ x @ A.T`` is its (separable) 2D resize."""
    key = (n, size, mode, str(like.device), like.dtype)
    if key not in _MATRICES:
        eye = torch.eye(n, device=like.device, dtype=like.dtype)[:, None, :, None]
        a = F.interpolate(eye, size=(size, 1), mode=mode, align_corners=False)[:, 0, :, 0]
        _MATRICES[key] = a.T.contiguous()
    return _MATRICES[key]


def upsample(z: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Bilinear / bicubic resize of the last two axes of ``z`` to ``size``: two small matmuls from a
    patch grid (much faster than F.interpolate on a CPU, equal to it within float rounding), and
    F.interpolate itself from larger maps."""
    h, w = z.shape[-2:]
    if (h, w) == (size, size):
        return z
    if max(h, w) <= 64:
        return _interp_matrix(h, size, mode, z) @ z @ _interp_matrix(w, size, mode, z).T
    flat = z.reshape(-1, 1, h, w)
    out = F.interpolate(flat, size=(size, size), mode=mode, align_corners=False)
    return out.view(*z.shape[:-2], size, size)


def _turn(t: Any, code: int) -> Any:
    """``code % 4`` quarter turns of the last two axes, then a left-right mirror when ``code >= 4``
    (torch tensors and numpy arrays alike)."""
    if isinstance(t, np.ndarray):
        t = np.rot90(t, code % 4, axes=(-2, -1))
        return t[..., ::-1] if code >= 4 else t
    t = torch.rot90(t, code % 4, dims=(-2, -1))
    return t.flip(-1) if code >= 4 else t


def augment_d4(x: Inputs, y: Any, codes: np.ndarray) -> tuple[Inputs, Any]:
    """Turn each row by one of the 8 symmetries of the square (``codes``, see :func:`_turn`): every
    cached grid of the row and its (square) target together, so patch (i, j) still covers the same
    target pixels. Exact for the head; not what the backbone would give the turned image. ``y``
    (targets) may be a numpy array: turned there, before it is widened and copied to the device."""

    def apply(t: Any) -> Any:
        if isinstance(t, np.ndarray):
            return np.stack([_turn(r, int(c)) for r, c in zip(t, codes, strict=True)])
        out = t.clone()
        for c in np.unique(codes):
            if c:
                idx = torch.from_numpy(np.flatnonzero(codes == c)).to(t.device)
                out[idx] = _turn(t[idx], int(c))
        return out

    xs = {k: apply(v) for k, v in x.items()} if isinstance(x, dict) else apply(x)
    return xs, apply(y)


class _RowwiseUpsampledDice(torch.autograd.Function):
    """Upsampling (two matmuls) + the summed Dice losses, loss and gradient computed together one
    image at a time: per-image Dice needs only that image's sums, so a row's K x C full-size maps
    are made, used and dropped while they are still in cache, and no full-batch map is kept."""

    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, target: torch.Tensor, ah: torch.Tensor, aw: torch.Tensor
    ) -> torch.Tensor:
        B, C, K = z.shape[:3]
        N, n = ah.shape[0] * aw.shape[0], B * C
        classes = torch.arange(C, device=z.device)[:, None]
        grad, total = torch.empty_like(z), z.new_zeros(())
        for b in range(B):
            p = (ah @ z[b] @ aw.T).softmax(0)  # (C, K, H, W)
            oh = (target[b].view(1, N) == classes).to(z.dtype)  # (C, N)
            inter = torch.bmm(p.view(C, K, N), oh[:, :, None])[..., 0]  # (C, K)
            den = oh.sum(1, keepdim=True) + p.view(C, K, N).sum(-1) + SMOOTH
            num = 2.0 * inter + SMOOTH
            total += (1.0 - num / den).sum()
            gp = (-2.0 / (den * n))[..., None] * oh[:, None, :] + (num / (den * den * n))[..., None]
            gz = torch._softmax_backward_data(gp.view_as(p), p, 0, p.dtype)
            grad[b] = ah.T @ gz @ aw
        ctx.save_for_backward(grad)
        return total / n

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * gout, None, None, None


def upsampled_dice_loss(z: torch.Tensor, target: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """:func:`dice_loss` of ``z`` (B, C, K, h, w) resized to ``size`` (:func:`upsample`): image by
    image from a patch grid (:class:`_RowwiseUpsampledDice`), whole-batch from larger maps."""
    h, w = z.shape[-2:]
    if max(h, w) <= 64 and (h, w) != (size, size):
        ah, aw = _interp_matrix(h, size, mode, z), _interp_matrix(w, size, mode, z)
        return _RowwiseUpsampledDice.apply(z, target, ah, aw)
    return dice_loss(upsample(z, size, mode), target)


def forward_of(heads: Sequence[nn.Module]) -> Callable[[Inputs], torch.Tensor]:
    """One head: its own forward. Several: the head class's ``fused_forward`` over all of them."""
    if len(heads) == 1:
        return heads[0]
    fused = getattr(type(heads[0]), "fused_forward", None)
    if fused is None:
        raise ValueError(f"{type(heads[0]).__name__} has no fused forward")
    return lambda x: fused(heads, x)


def batches(
    rows: np.ndarray, bs: int, total: int, s: FusedSettings, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``total`` batches of ``rows`` and each row's pass over the data. ``s.sampler="epoch"``: a
    permutation per pass (``rng``), the last batch short; ``"stream"``: full batches cut from one
    endless stream of seeded permutations, ``ceil(n / batch)`` an epoch (the released sampler)."""
    if s.sampler == "stream":
        pos, passes = stream_steps(len(rows), bs, total, s.seed)
        yield from zip(rows[pos], passes, strict=True)
        return
    step, epoch, n = 0, 0, len(rows)
    while step < total:
        order, passes = rows[rng.permutation(n)], np.full(n, epoch)
        for i in range(0, len(order), bs):
            if step >= total:
                return
            yield order[i : i + bs], passes[i : i + bs]
            step += 1
        epoch += 1


def train_fused(
    heads: Sequence[nn.Module],
    fetch: Fetch,
    targets: np.ndarray,
    rows: np.ndarray,
    s: FusedSettings,
    online: Online | None = None,
) -> TrainStats:
    """Train ``heads[k]`` at ``s.lrs[k]``, all on the same batches and augmentations, in place.
    ``online``: the training inputs come from it (augmented images through the backbone), not
    from ``fetch`` (which still serves the BatchNorm statistics of the un-augmented rows)."""
    if len(heads) != len(s.lrs):
        raise ValueError(f"{len(heads)} heads for {len(s.lrs)} learning rates")
    device = torch.device(s.device)
    for h in heads:
        h.to(device).train()
    forward = forward_of(heads)
    groups = [
        {"params": [p for p in h.parameters() if p.requires_grad], "lr": lr}
        for h, lr in zip(heads, s.lrs, strict=True)
    ]
    opt = torch.optim.SGD(groups, lr=s.lrs[0], momentum=s.momentum, weight_decay=s.weight_decay)
    bs = max(1, min(s.batch_size, len(rows)))  # the whole set when it is smaller (segmentation.py:407)
    total = max(s.epochs * math.ceil(len(rows) / bs), s.min_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))
    rng = np.random.default_rng(s.seed)
    K, size, mode = len(heads), targets.shape[-1], getattr(heads[0], "upsample", "bilinear")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, seen, last = 0, 0, float("nan")
    t0 = time.perf_counter()
    for batch, passes in batches(rows, bs, total, s, rng):
        if online is not None:
            x, y = online(batch, passes, targets)
        else:
            x, yb = fetch(batch), targets[batch]
            if s.augment:
                x, yb = augment_d4(x, yb, rng.integers(0, 8, len(batch)))
            y = torch.from_numpy(yb.astype(np.int64)).to(device)
        logits = forward(x)  # (B, K * C, h, w), head-major
        h, w = logits.shape[-2:]
        z = logits.view(len(batch), K, -1, h, w).transpose(1, 2)  # class-major, at patch size
        loss = upsampled_dice_loss(z, y, size, mode)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last = float(loss.detach()) / K
        step += 1
        seen += len(batch)
    seconds = time.perf_counter() - t0
    for h in heads:
        if s.precise_bn:
            precise_bn(h, fetch, rows, bs)  # BatchNorm heads (the decoder); a no-op for the linear head
        h.eval()
    return TrainStats(step, seconds, seen / seconds if seconds > 0 else 0.0, peak_memory_mb(device), last)


@torch.no_grad()
def predict_heads(
    heads: Sequence[nn.Module], fetch: Fetch, split: Any, chunk: int = 16
) -> list[list[np.ndarray]]:
    """Every head's predictions of ``split`` (as :func:`predict`); BatchNorm-free heads in one fused
    forward and one upsampling per chunk, others (BatchNorm wants eval mode) one by one."""
    bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in heads[0].modules())
    if len(heads) == 1 or bn:
        return [predict(h, fetch, split) for h in heads]
    for h in heads:
        h.eval()
    forward, K = forward_of(heads), len(heads)
    out: list[list[np.ndarray]] = [[] for _ in heads]
    for case in split.cases:
        rows = np.arange(case.rows.start, case.rows.stop)
        parts = []
        for i in range(0, len(rows), chunk):
            lg = forward(fetch(rows[i : i + chunk]))
            b, _, h, w = lg.shape
            labels = to_labels(lg.view(b * K, -1, h, w), case.shape[-2:], upsampling(heads[0], split))
            parts.append(labels.view(b, K, *case.shape[-2:]))
        pred = torch.cat(parts).numpy()
        for k in range(K):
            out[k].append(pred[:, k] if len(case.shape) == 3 else pred[0, k])
    return out


def init_heads(build: Callable[[], nn.Module], n: int, seed: int) -> list[nn.Module]:
    """``n`` heads with the same initial weights (those of ``build()`` after ``manual_seed(seed)``)."""
    out = []
    for _ in range(n):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out.append(build())
    return out


def selection(
    lrs: Sequence[float], scores: Sequence[float], best: int, model: nn.Module, stats: TrainStats
) -> dict[str, Any]:
    """What a sweep selected: the lr ``lrs[best]``, every lr's validation Dice, the model's size and
    the training accounting."""
    return {
        "lr": lrs[best],
        "val_dice": scores[best],
        "val_dice_by_lr": {f"{lr:g}": sc for lr, sc in zip(lrs, scores, strict=True)},
        "trainable_params": count_trainable(model),
        "train_steps": stats.steps,
        "train_imgs_per_s": round(stats.imgs_per_s, 2),
    }


def sequential_sweep(
    data: Any,
    build: Callable[[], nn.Module],
    fetch: dict[str, Fetch],
    seed: int,
    lrs: Sequence[float],
    train_one: Callable[[nn.Module, float], TrainStats],
    predictor: Predictor = predict,
) -> tuple[nn.Module, dict[str, Any], TrainStats]:
    """One model per lr from the same initial weights, trained by ``train_one(model, lr)``; the best
    validation macro Dice (of ``predictor``'s maps) is kept (the first of equals) with its
    :func:`selection`."""
    assert data.val.masks is not None
    scores: list[float] = []
    best: tuple[int, nn.Module, TrainStats] | None = None
    for i, lr in enumerate(lrs):
        (model,) = init_heads(build, 1, seed)
        stats = train_one(model, lr)
        score = split_dice(predictor(model, fetch["val"], data.val), data.val.masks, len(data.classes))
        scores.append(score)
        if best is None or score > scores[best[0]]:
            best = (i, model, stats)
    assert best is not None
    i, model, stats = best
    return model, selection(lrs, scores, i, model, stats), stats


def train_plus_val(data: Any, fetch: dict[str, Fetch]) -> tuple[Fetch, np.ndarray, np.ndarray]:
    """Fetch, targets and rows of the training and validation splits together (the refit's data)."""
    n = data.train.n_rows
    targets = np.concatenate([data.train.targets, data.val.targets])
    return concat_fetch(fetch["train"], fetch["val"], n), targets, np.arange(n + data.val.n_rows)


def _online(data: Any, head: nn.Module, splits: Sequence[str], opts: dict[str, Any]) -> Online | None:
    """The released augmentation through the frozen backbone over ``splits`` (``augment="images"``)."""
    if opts.get("augment") != "images":
        return None
    missing = [s for s in splits if s not in data.pixels]
    if data.backbone is None or missing:
        raise RuntimeError(f"augment='images' needs the backbone and the resized images of {missing}")
    parts = [data.pixels[s] for s in splits]
    return online_mod.OnlineGrids(data.backbone, head.layers, parts, data.seed, data.device)


def paper_sweep(
    data: Any,
    build: Callable[[], nn.Module],
    fetch: dict[str, Fetch],
    train_idx: np.ndarray | None,
    opts: dict[str, Any],
    seed: int,
    fused: bool | None = None,
) -> tuple[nn.Module, dict[str, Any], TrainStats]:
    """Baharoon et al.'s sweep: every lr trained from the same start on the same batches (fused, or
    one after another: the same result), the best validation macro Dice wins (first of equals), then,
    with ``opts["refit"]`` and the whole training split, a new head trains at that lr on train + val
    (few-shot runs keep their head, as ``segmentation.py:481`` keeps the few-shot training set).

    ``fused=None``: fused unless the head class says it only pays on CUDA (``fuse_on = "cuda"``: the
    up decoder's grouped convolutions are slower than separate ones on a CPU, bench/seg_sweep.py) and
    the backbone does not run per batch (``augment="images"``: it runs once for all heads)."""
    rows = data.train.rows(train_idx)
    lrs = tuple(float(x) for x in opts["lrs"])
    heads = init_heads(build, len(lrs), seed)
    online = _online(data, heads[0], ["train"], opts)
    if fused is None:
        fused = (
            getattr(heads[0], "fuse_on", "any") == "any"
            or str(data.device).startswith("cuda")
            or online is not None
        )

    def settings(rates: tuple[float, ...]) -> FusedSettings:
        return FusedSettings(
            rates, opts["epochs"], opts["min_steps"], opts["batch_size"], seed,
            weight_decay=opts["weight_decay"], augment=opts.get("augment", "grids") == "grids",
            device=data.device, sampler=opts.get("sampler") or "epoch", precise_bn=False,
        )  # fmt: skip

    if fused:
        stats = train_fused(heads, fetch["train"], data.train.targets, rows, settings(lrs), online)
    else:
        for h, lr in zip(heads, lrs, strict=True):
            stats = train_fused([h], fetch["train"], data.train.targets, rows, settings((lr,)), online)
    C = len(data.classes)
    preds = (
        predict_heads(heads, fetch["val"], data.val)
        if fused
        else [predict(h, fetch["val"], data.val) for h in heads]
    )
    scores = [split_dice(p, data.val.masks, C) for p in preds]
    best = int(np.argmax(scores))  # argmax: the first of equal scores, as the released code's ">"
    model = heads[best]
    selected = {**selection(lrs, scores, best, model, stats), "sweep": "fused" if fused else "sequential"}
    if online is not None:
        selected["augmented_forwards"] = online.forwards  # type: ignore[attr-defined]
    if opts.get("refit") and train_idx is None:
        tv_fetch, tv_targets, tv_rows = train_plus_val(data, fetch)
        (model,) = init_heads(build, 1, seed)
        tv_online = _online(data, model, ["train", "val"], opts)
        refit = train_fused([model], tv_fetch, tv_targets, tv_rows, settings((lrs[best],)), tv_online)
        selected["refit"] = {"rows": len(tv_rows), "steps": refit.steps}
    return model, selected, stats


AUGMENTATIONS = {
    "images": online_mod.DESCRIPTION,
    "grids": "flip+rot90 on cached grids (grid and mask together; released: on images)",
    "none": "none",
}


def paper_hparams(opts: dict[str, Any], head: str) -> dict[str, Any]:
    """What a ``preset`` / ``refit`` run adds to its hparams (nothing for a default run)."""
    out: dict[str, Any] = {}
    if opts.get("preset") == "paper":
        aug = opts.get("augment") or "grids"
        out.update(
            preset="paper",
            head=head,
            optimizer="SGD momentum 0.9, per-step cosine to 0",
            loss="monai DiceLoss (softmax, background included, per image)",
            augmentation=AUGMENTATIONS[aug],
            sampler=opts.get("sampler") or "epoch",
            sweep="every lr from the same start on the same batches, selected on val macro Dice",
        )
    if opts.get("refit"):
        out["refit"] = "train+val at the selected lr (full-data runs)"
    return out
