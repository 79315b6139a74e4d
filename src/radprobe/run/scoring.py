"""Scoring the test split, once, the same way for every family: metrics with patient-bootstrap CIs,
and the per-sample (classification) or per-case (segmentation) table kept for ``radprobe compare``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radprobe.metrics import bootstrap_metrics
from radprobe.metrics.segmentation import CaseScores, CaseTable, SegMetric, summarize
from radprobe.results.predictions import Predictions
from radprobe.results.rows import Scored, ci_method


def score_classification(
    labels: np.ndarray,
    scores: np.ndarray,
    task: str,
    groups: np.ndarray,
    sample_ids: Sequence[str],
    *,
    n_boot: int,
    seed: int,
    path: Path,
    class_names: Sequence[str] | None = None,
) -> list[Scored]:
    """Every classification metric of the test scores (with ``class_names``: each class's too);
    saves the predictions at ``path``."""
    metrics = bootstrap_metrics(
        labels, scores, task, groups=groups, n_boot=n_boot, seed=seed, class_names=class_names
    )
    Predictions(sample_ids=np.asarray(sample_ids), groups=groups, labels=labels, scores=scores).save(path)
    return [
        Scored(
            m.name,
            m.value,
            m.ci_low if n_boot else None,
            m.ci_high if n_boot else None,
            ci_method(n_boot),
            list(m.warnings),
        )
        for m in metrics
    ]


def score_cases(
    cases: Sequence[CaseScores],
    classes: Sequence[str],
    groups: np.ndarray,
    sample_ids: Sequence[str],
    *,
    n_boot: int,
    seed: int,
    unit: str,
    path: Path,
) -> tuple[list[SegMetric], list[str]]:
    """Dice / IoU / HD95 per class over the test cases, and warnings; saves the case table at ``path``."""
    metrics, warns = summarize(cases, classes, groups, n_boot=n_boot, seed=seed, unit=unit)
    CaseTable.of(cases, sample_ids, groups, classes).save(path)
    return metrics, warns


def scored_cases(metrics: Sequence[SegMetric], warns: list[str], n_boot: int) -> list[Scored]:
    """Segmentation metrics as :class:`Scored` (no interval where a class had no cases)."""
    method = ci_method(n_boot)
    return [
        Scored(m.name, m.value, m.ci_low, m.ci_high, method if m.ci_low is not None else "", warns)
        for m in metrics
    ]
