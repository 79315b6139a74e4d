"""Few-shot evaluation: n labelled training samples per class, repeated over seeded draws.

For each n in ``shots`` and each of ``repeats`` draws, a training subset is sampled with n samples
per class from n distinct patients (multi-label: samples are added until every label has n
positives), and kNN, linear and logreg run on it. Validation and test stay whole: selection still
happens on validation only. Each (n, protocol) becomes one result row: the mean over draws of the
task's headline metric with a t-interval over draws, and every draw's value, sd and selection kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import numpy as np
from annotated_types import Ge
from scipy import stats

from radprobe.metrics.classification import HEADLINE, classification_metrics
from radprobe.protocols import knn, linear, logreg
from radprobe.protocols.base import ProtocolInput, ProtocolResult, Summary

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
# Few-shot fits are many (shots x draws) and tiny; logreg sweeps one C per decade of DINOv2's range
# (1e-6 … 1e5) instead of 45 values. Override with inner={"logreg": {"cs": [...]}}.
DEFAULT_INNER: dict[str, dict[str, Any]] = {"logreg": {"cs": [float(c) for c in np.logspace(-6, 5, 12)]}}
INNER: dict[str, Callable[..., ProtocolResult]] = {"knn": knn.run, "linear": linear.run, "logreg": logreg.run}
# Protocols that fit many training sets in one pass (one result per input, in order).
BATCHED: dict[str, Callable[..., list[ProtocolResult]]] = {"linear": linear.run_many}


def draw(labels: np.ndarray, groups: np.ndarray, n: int, task: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of a few-shot subset: n per class, at most one sample per patient and class."""
    labels = np.asarray(labels)
    if task == "multilabel":
        chosen: list[int] = []
        used_patients: set[str] = set()
        counts = np.zeros(labels.shape[1], dtype=int)
        for i in rng.permutation(len(labels)):
            if counts.min() >= n:
                break
            need = (labels[i] == 1) & (counts < n)
            if need.any() and groups[i] not in used_patients:
                chosen.append(int(i))
                used_patients.add(groups[i])
                counts += labels[i] == 1  # -1 (unknown) is not a positive
        return np.asarray(sorted(chosen))
    out = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        picked, seen = [], set()
        for i in idx:
            if groups[i] in seen:
                continue
            picked.append(int(i))
            seen.add(groups[i])
            if len(picked) == n:
                break
        out += picked
    return np.asarray(sorted(out))


def run(
    data: ProtocolInput,
    shots: Sequence[Annotated[int, Ge(1)]] = DEFAULT_SHOTS,
    repeats: Annotated[int, Ge(1)] = 5,
    protocols: Sequence[str] = ("knn", "linear", "logreg"),
    inner: dict[str, dict[str, Any]] | None = None,
) -> ProtocolResult:
    """Run each inner protocol on every draw; one summary row per (shots, protocol)."""
    inner = {**DEFAULT_INNER, **(inner or {})}
    headline = HEADLINE[data.task][0]
    summaries: list[Summary] = []

    # every (shots, draw) subset first: batched protocols (linear) then train all of them at once
    def subset(n: int, r: int) -> np.ndarray:
        return draw(
            data.train.labels, data.train.groups, n, data.task, np.random.default_rng([data.seed, n, r])
        )

    subsets = [(n, r, subset(n, r)) for n in sorted(shots) for r in range(repeats)]
    inputs = [
        ProtocolInput(
            train=data.train.subset(idx),
            val=data.val,
            test=data.test,
            task=data.task,
            num_classes=data.num_classes,
            seed=data.seed + r,
        )
        for _, r, idx in subsets
    ]
    for proto in protocols:
        kw = dict(inner.get(proto, {}))
        if proto in BATCHED:
            results = BATCHED[proto](inputs, **kw)
        else:
            results = []
            for sub in inputs:
                sub_kw = dict(kw)
                if proto == "knn":
                    sub_kw.setdefault("ks", [k for k in (1, 3, 5, *knn.DEFAULT_KS) if k <= len(sub.train)])
                results.append(INNER[proto](sub, **sub_kw))
        for n in sorted(shots):
            vals, selections, row_warnings, sizes = [], [], [], []
            for (n_i, r, idx), res in zip(subsets, results, strict=True):
                if n_i != n:
                    continue
                value, w = classification_metrics(data.test.labels, res.scores, data.task)
                vals.append(float(value[headline]))
                selections.append(res.selected)
                sizes.append(len(idx))
                row_warnings += [f"draw {r}: {x}" for x in w + res.warnings]
            mean = float(np.mean(vals))
            sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            half = (
                float(stats.t.ppf(0.975, len(vals) - 1) * sd / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
            )
            summaries.append(
                Summary(
                    protocol=f"fewshot-{proto}",
                    metric=headline,
                    value=mean,
                    ci_low=mean - half if len(vals) > 1 else None,
                    ci_high=mean + half if len(vals) > 1 else None,
                    ci_method=f"t-interval over {len(vals)} draws" if len(vals) > 1 else "",
                    hparams={"shots": n, "repeats": repeats, **inner.get(proto, {})},
                    selected={
                        "values": vals,
                        "sd": sd,
                        "train_sizes": sizes,
                        "per_draw": selections,
                    },
                    warnings=sorted(set(row_warnings)),
                )
            )
    return ProtocolResult(
        scores=None,
        hparams={"shots": list(shots), "repeats": repeats, "protocols": list(protocols)},
        selected={},
        summaries=summaries,
    )
