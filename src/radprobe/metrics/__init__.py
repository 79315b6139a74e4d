"""Metrics with patient-level bootstrap confidence intervals."""

from radprobe.metrics.classification import (
    HEADLINE,
    MetricValue,
    bootstrap_metrics,
    classification_metrics,
)

__all__ = ["HEADLINE", "MetricValue", "bootstrap_metrics", "classification_metrics"]
