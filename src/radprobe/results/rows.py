"""One recipe for every result row: the evaluation key and the fields every family shares.

Frozen, segmentation and trained protocols all build their rows here, so a key means the same
thing whichever path wrote it: the model (name, weights digest and what fixes its inputs), the
dataset's manifest and split digests, the seed, the protocol and its hyperparameters, and the
number of bootstrap resamples where the scores were resampled.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from radprobe.results.store import ResultRow
from radprobe.utils import digest

SPLITS = ("train", "val", "test")


class DatasetLike(Protocol):
    """What a row reads of a dataset (``radprobe.data.Dataset`` is one)."""

    name: str
    task: str
    classes: tuple[str, ...]

    def manifest_digest(self) -> str: ...

    def split_digest(self, split: str) -> str: ...


@dataclass(frozen=True)
class Subject:
    """The model and data a row evaluates.

    ``model_key``: what fixes the model's inputs: ``{"preprocess": ...}`` for a backbone, or
    ``{"resolution": n}`` for a model trained from scratch (the U-Net baseline).
    """

    backbone: str
    weights_digest: str
    dataset: DatasetLike
    seed: int
    model_key: dict[str, Any] = field(default_factory=dict)

    def key_spec(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "backbone": self.backbone,
            "weights": self.weights_digest,
            **self.model_key,
            "dataset": ds.manifest_digest(),
            "splits": [ds.split_digest(s) for s in SPLITS],
            "seed": self.seed,
        }


def eval_key(subject: Subject, protocol: str, hparams: dict[str, Any], n_boot: int | None = None) -> str:
    """The idempotent key of one evaluation; ``n_boot`` joins it where the scores were resampled
    (left out, it keys the training itself, so more resamples re-score without retraining)."""
    spec = {**subject.key_spec(), "protocol": protocol, "hparams": hparams}
    if n_boot is not None:
        spec["n_boot"] = n_boot
    return digest(spec, 24)


def base_row(subject: Subject, run_id: str, **fields: Any) -> dict[str, Any]:
    """The fields of a :class:`~radprobe.results.ResultRow` that every family fills the same way,
    plus the family's own ``fields`` (counts, compute, env)."""
    ds = subject.dataset
    return {
        "run_id": run_id,
        "backbone": subject.backbone,
        "weights_digest": subject.weights_digest,
        "dataset": ds.name,
        "manifest_digest": ds.manifest_digest(),
        "split_digest": ds.split_digest("test"),
        "seed": subject.seed,
        "task": ds.task,
        "num_classes": len(ds.classes),
        **fields,
    }


def ci_method(n_boot: int) -> str:
    """How a patient-bootstrap interval was made ('' when none was)."""
    return f"patient bootstrap x{n_boot}, percentile 95%" if n_boot else ""


@dataclass
class Scored:
    """One metric of the test split, ready to become a row."""

    name: str
    value: float
    ci_low: float | None
    ci_high: float | None
    ci_method: str
    warnings: list[str]


def metric_rows(
    base: dict[str, Any],
    key: str,
    protocol: str,
    scored: Iterable[Scored],
    hparams: dict[str, Any],
    selected: dict[str, Any],
    warnings: Sequence[str] = (),
    **fields: Any,
) -> list[ResultRow]:
    """One row per scored metric of one evaluation: ``base`` (from :func:`base_row`), its key,
    what it ran and selected, and the evaluation's ``warnings`` before each metric's own."""
    return [
        ResultRow(
            **base,
            **fields,
            eval_key=key,
            protocol=protocol,
            metric=m.name,
            value=m.value,
            ci_low=m.ci_low,
            ci_high=m.ci_high,
            ci_method=m.ci_method,
            hparams=hparams,
            selected=selected,
            warnings=[*warnings, *m.warnings],
        )
        for m in scored
    ]
