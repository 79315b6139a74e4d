"""What a protocol receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Bags:
    """Slice features of volumes: rows ``offsets[i]:offsets[i + 1]`` of ``features`` are volume i's."""

    def __init__(self, features: np.ndarray, offsets: np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        if (
            offsets.ndim != 1
            or len(offsets) < 1
            or offsets[0] != 0
            or offsets[-1] != len(features)
            or np.any(np.diff(offsets) <= 0)
        ):
            raise ValueError("bag offsets must rise strictly from 0 to the number of slice rows")
        self.features = features
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.features[self.offsets[i] : self.offsets[i + 1]]

    @property
    def sizes(self) -> np.ndarray:
        """Slices per volume."""
        return np.diff(self.offsets)

    @classmethod
    def from_list(cls, bags: list[np.ndarray]) -> Bags:
        """Bags from one (slices, D) array per volume."""
        return cls(np.concatenate(bags), np.concatenate([[0], np.cumsum([len(b) for b in bags])]))

    def subset(self, idx: np.ndarray) -> Bags:
        """The volumes ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) == 0:
            return Bags(self.features[:0], np.zeros(1, dtype=np.int64))
        return Bags.from_list([np.asarray(self[int(i)]) for i in idx])

    def concat(self, other: Bags) -> Bags:
        """These volumes followed by ``other``'s."""
        return Bags.from_list(
            [np.asarray(self[i]) for i in range(len(self))]
            + [np.asarray(other[i]) for i in range(len(other))]
        )


class SplitFeatures:
    """Features and labels of one split, read-only.

    features: (N, D) the class token (kNN, logreg); blocks: (N, n, 2, D) the last n blocks'
    (cls, patch-mean) pairs (linear probing), when the cache holds them. For 3D datasets a row is a
    volume (slice features pooled), and ``bags`` holds every volume's per-slice class tokens (MIL).
    ``views``: the blocks of augmented views of every image, one (N, n, 2, D) array per view, for
    probes that train on augmented images (:mod:`radprobe.features.views`).
    Multi-label labels of -1 are unknown: neither positive nor negative.
    """

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        blocks: np.ndarray | None = None,
        bags: Bags | None = None,
        views: list[np.ndarray] | None = None,
    ) -> None:
        if len(features) != len(labels) or len(labels) != len(groups):
            raise ValueError("features, labels and groups differ in length")
        if blocks is not None and len(blocks) != len(features):
            raise ValueError("blocks and features differ in length")
        if bags is not None and len(bags) != len(features):
            raise ValueError("bags and features differ in length")
        if views is not None and (not views or any(len(v) != len(features) for v in views)):
            raise ValueError("every augmented view must hold one row per sample")
        self.features = features
        self.labels = labels
        self.groups = groups
        self.blocks = blocks
        self.bags = bags
        self.views = views

    def subset(self, idx: np.ndarray) -> SplitFeatures:
        """The rows ``idx`` of this split (few-shot draws)."""
        return SplitFeatures(
            np.asarray(self.features)[idx],
            self.labels[idx],
            self.groups[idx],
            None if self.blocks is None else np.asarray(self.blocks)[idx],
            None if self.bags is None else self.bags.subset(idx),
            None if self.views is None else [np.asarray(v)[idx] for v in self.views],
        )

    def concat(self, other: SplitFeatures) -> SplitFeatures:
        """This split followed by ``other`` (refit on train + val)."""
        blocks = None
        if self.blocks is not None and other.blocks is not None:
            blocks = np.concatenate([np.asarray(self.blocks), np.asarray(other.blocks)])
        bags = None
        if self.bags is not None and other.bags is not None:
            bags = self.bags.concat(other.bags)
        views = None
        if self.views is not None and other.views is not None:
            if len(self.views) != len(other.views):
                raise ValueError(f"{len(self.views)} views cannot be joined to {len(other.views)}")
            views = [
                np.concatenate([np.asarray(a), np.asarray(b)])
                for a, b in zip(self.views, other.views, strict=True)
            ]
        return SplitFeatures(
            np.concatenate([np.asarray(self.features), np.asarray(other.features)]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.groups, other.groups]),
            blocks,
            bags,
            views,
        )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ProtocolInput:
    """Frozen features of train / val / test, the task, and the seed.

    ``test`` must only be read for the final score: protocols choose hyperparameters on ``val``.
    """

    train: SplitFeatures
    val: SplitFeatures
    test: SplitFeatures
    task: str
    num_classes: int
    seed: int = 0
    n_boot: int = 1000  # patient resamples, for protocols that score rows of their own (per-k kNN)


@dataclass
class Summary:
    """A finished result row of a protocol that aggregates several fits (e.g. few-shot draws)."""

    protocol: str
    metric: str
    value: float
    ci_low: float | None
    ci_high: float | None
    ci_method: str
    hparams: dict[str, Any]
    selected: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass
class ProtocolResult:
    """Test-set scores (N_test, C) plus what was selected on validation.

    Protocols that aggregate many fits return ``summaries`` (one row each) instead of ``scores``.
    """

    scores: np.ndarray | None
    hparams: dict[str, Any]
    selected: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
