"""What a protocol receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radprobe.metrics.classification import HEADLINE, classification_metrics


class SplitFeatures:
    """Features and labels of one split, read-only."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> None:
        if len(features) != len(labels) or len(labels) != len(groups):
            raise ValueError("features, labels and groups differ in length")
        self.features = features
        self.labels = labels
        self.groups = groups

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
class ProtocolResult:
    """Test-set scores (N_test, C) plus what was selected on validation."""

    scores: np.ndarray
    hparams: dict[str, Any]
    selected: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def validation_score(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    """The task's headline metric on validation, used for model selection (higher is better)."""
    vals, _ = classification_metrics(labels, scores, task)
    v = vals[HEADLINE[task][0]]
    return float(v) if np.isfinite(v) else float("-inf")
