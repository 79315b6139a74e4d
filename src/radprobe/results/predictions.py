"""Per-sample test predictions of an evaluation, kept beside the results database.

Stored as ``<run>/predictions/<eval_key>.npz`` (atomic write) so paired comparisons and reports can
be computed later without re-running anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radprobe.utils import atomic_path


@dataclass
class Predictions:
    """Test-set scores (N, C) with the labels, patients and sample ids they belong to."""

    sample_ids: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                sample_ids=np.asarray(self.sample_ids, dtype=str),
                groups=np.asarray(self.groups, dtype=str),
                labels=self.labels,
                scores=self.scores,
            )

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["sample_ids"], z["groups"], z["labels"], z["scores"])


def predictions_path(run_dir: str | Path, eval_key: str) -> Path:
    """Where the predictions of evaluation ``eval_key`` live in a run directory."""
    return Path(run_dir) / "predictions" / f"{eval_key}.npz"
