"""What a protocol receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radprobe.metrics.classification import HEADLINE, classification_metrics


class SplitFeatures:
    """Features and labels of one split, read-only.

    features: (N, D) the class token (kNN, logreg); blocks: (N, n, 2, D) the last n blocks'
    (cls, patch-mean) pairs (linear probing), when the cache holds them.
    """

    def __init__(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        blocks: np.ndarray | None = None,
    ) -> None:
        if len(features) != len(labels) or len(labels) != len(groups):
            raise ValueError("features, labels and groups differ in length")
        if blocks is not None and len(blocks) != len(features):
            raise ValueError("blocks and features differ in length")
        self.features = features
        self.labels = labels
        self.groups = groups
        self.blocks = blocks

    def subset(self, idx: np.ndarray) -> SplitFeatures:
        """The rows ``idx`` of this split (few-shot draws)."""
        return SplitFeatures(
            np.asarray(self.features)[idx],
            self.labels[idx],
            self.groups[idx],
            None if self.blocks is None else np.asarray(self.blocks)[idx],
        )

    def concat(self, other: SplitFeatures) -> SplitFeatures:
        """This split followed by ``other`` (refit on train + val)."""
        blocks = None
        if self.blocks is not None and other.blocks is not None:
            blocks = np.concatenate([np.asarray(self.blocks), np.asarray(other.blocks)])
        return SplitFeatures(
            np.concatenate([np.asarray(self.features), np.asarray(other.features)]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.groups, other.groups]),
            blocks,
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


def validation_score(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    """The task's headline metric on validation, used for model selection (higher is better)."""
    vals, _ = classification_metrics(labels, scores, task)
    v = vals[HEADLINE[task][0]]
    return float(v) if np.isfinite(v) else float("-inf")
