"""Predictions of a model under training: scores, class maps and the validation score, in eval mode,
optionally shared out across data-parallel ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radprobe.finetune import distributed
from radprobe.finetune.data import ImageSet, eval_loader
from radprobe.finetune.heads import HeadGrid, SegmentationHead
from radprobe.finetune.methods import Built
from radprobe.metrics.fast import validation_score

if TYPE_CHECKING:
    from radprobe.segmentation.data import SegSplit


@dataclass
class Split:
    """Images of one split and their targets.

    Classification: ``targets`` are the labels. Segmentation: ``targets`` are the masks at the
    preprocessed resolution, one per row (an image, or a slice of a volume), and ``seg`` holds the
    cases (images or volumes) with their original masks.
    """

    images: ImageSet
    targets: np.ndarray
    seg: SegSplit | None = None


def unpack(
    batch: list[torch.Tensor], split: Split, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, row indices and targets of a loader batch; augmented masks come with their images."""
    x, rows = batch[0], batch[1]
    y = batch[2] if len(batch) > 2 else torch.as_tensor(split.targets[rows.numpy()])
    return x.to(device, non_blocking=True), rows, y.to(device, non_blocking=True)


def autocast(device: torch.device, amp: bool, dtype: str = "bf16") -> contextlib.AbstractContextManager:
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.float16 if dtype == "fp16" else torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, amp: bool, dtype: str = "bf16") -> str:
    return f"{dtype}-autocast" if device.type == "cuda" and amp else "fp32"


@torch.no_grad()
def _predict_rows(
    built: Built,
    split: Split,
    batch_size: int,
    device: torch.device,
    amp: bool,
    num_workers: int,
    shard: tuple[int, int] | None,
    per_row: Callable[[torch.Tensor, list[int]], list[Any]],
    amp_dtype: str = "bf16",
) -> tuple[list[Any], float]:
    """``per_row(logits, rows)``'s outputs for every row in split order, and the mean loss; with
    ``shard`` each rank predicts its share and the shares are gathered."""
    model = built.model
    model.eval()
    out: list[Any] = []
    order: list[int] = []
    loss_sum = 0.0
    for batch in eval_loader(split.images, batch_size, num_workers, shard):
        x, rows, y = unpack(batch, split, device)
        with autocast(device, amp, amp_dtype):
            logits = model(x)
        loss_sum += float(model.head.loss(logits, y)) * len(rows)
        out.extend(per_row(logits, rows.tolist()))
        order.extend(rows.tolist())
    out, loss_sum = distributed.gather(order, out, loss_sum, len(split.targets), shard)
    return out, loss_sum / max(1, len(split.targets))


def predict(
    built: Built,
    split: Split,
    batch_size: int,
    device: torch.device,
    amp: bool,
    num_workers: int = 0,
    shard: tuple[int, int] | None = None,
    amp_dtype: str = "bf16",
) -> tuple[np.ndarray, float]:
    """Scores (N, C) of a split and its mean loss, in eval mode (``shard``: the ranks share the rows)."""
    head = built.model.head
    scores, loss = _predict_rows(
        built, split, batch_size, device, amp, num_workers, shard,
        lambda logits, rows: list(head.scores(logits).cpu().double().numpy()), amp_dtype,
    )  # fmt: skip
    return np.stack(scores), loss


def predict_masks(
    built: Built,
    split: Split,
    batch_size: int,
    device: torch.device,
    amp: bool,
    num_workers: int = 0,
    shard: tuple[int, int] | None = None,
    amp_dtype: str = "bf16",
) -> tuple[list[np.ndarray], float]:
    """Predicted class maps of a segmentation split, one per case at its mask's shape, and the mean loss.

    Rows (images, or slices of volumes) are predicted in split order (``shard``: the ranks share the
    rows); each is upsampled to its case's in-plane mask size, and a volume's slices are stacked back
    into the volume.
    """
    from radprobe.segmentation.train import to_labels

    seg = split.seg
    assert seg is not None
    case_of = np.repeat(np.arange(len(seg.cases)), [c.rows.stop - c.rows.start for c in seg.cases])

    def labels(logits: torch.Tensor, rows: list[int]) -> list[np.ndarray]:
        # cases may differ in size, so each row is upsampled on its own
        return [
            to_labels(logit[None], seg.cases[case_of[r]].shape[-2:])[0].numpy()
            for logit, r in zip(logits, rows, strict=True)
        ]

    rows_out, loss = _predict_rows(
        built, split, batch_size, device, amp, num_workers, shard, labels, amp_dtype
    )
    return seg.assemble(rows_out), loss


def val_score(
    built: Built,
    split: Split,
    task: str,
    batch_size: int,
    device: torch.device,
    amp: bool,
    num_workers: int,
    shard: tuple[int, int] | None = None,
    amp_dtype: str = "bf16",
) -> tuple[float, float]:
    """The validation score model selection maximises, and the mean validation loss (``shard``: the
    data-parallel ranks predict a share each and every rank scores the whole split).

    A grid of heads is scored head by head; the best (first of equals) becomes the one that predicts,
    and its score is returned.
    """
    head = built.model.head
    if split.seg is not None:
        from radprobe.metrics.segmentation import split_dice

        assert split.seg.masks is not None and isinstance(head, SegmentationHead)
        preds, loss = predict_masks(built, split, batch_size, device, amp, num_workers, shard, amp_dtype)
        return split_dice(preds, split.seg.masks, head.num_classes), loss
    if isinstance(head, HeadGrid):
        probs, loss = _predict_rows(
            built, split, batch_size, device, amp, num_workers, shard,
            lambda logits, rows: list(head.head_probs(logits).cpu().double().numpy()), amp_dtype,
        )  # fmt: skip
        per_head = head.val_scores(split.targets, np.stack(probs, axis=1))
        best = int(np.argmax(per_head))
        head.selected.fill_(best)
        return float(per_head[best]), loss
    scores, loss = predict(built, split, batch_size, device, amp, num_workers, shard, amp_dtype)
    return validation_score(split.targets, scores, task), loss
