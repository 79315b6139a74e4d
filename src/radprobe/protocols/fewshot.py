"""Few-shot evaluation: n labelled training samples per class, repeated over seeded draws.

For each n in ``shots`` and each of ``repeats`` draws, a training subset is sampled with n samples
per class from n distinct patients (multi-label: samples are added until every label has n
positives), and kNN, linear and logreg run on it. Validation and test stay whole: selection still
happens on validation only. Each (n, protocol) becomes one result row: the mean over draws of the
task's headline metric with a t-interval over draws, and every draw's value, sd and selection kept.

``rule`` replaces the seeded draws with one of the two deterministic draws of Baharoon et al. (arXiv
2312.02366, dinov2/data/wrappers.py FewShotDatasetWrapper; docs/paper-fidelity.md):

- ``nih`` (dinov2/data/utils.py get_fewshot_in_nih): for each label, the first n patients (in patient
  ID order) whose every training image carries it, with all of their images;
- ``evenly_spaced``: n images in all (not per class), at rows round(i * N / n) of the pool.

``preset="paper"`` is that paper's few-shot linear probe: one draw by ``rule`` (which it needs: the
runner does not see the dataset's name), linear heads with the linear ``paper`` preset, no refit.
``pool="train+val"`` draws from train and val together, as the released runs did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from annotated_types import Ge
from scipy import stats

from radprobe.errors import OptionError
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
RULES = ("nih", "evenly_spaced")
# The paper's few-shot runs (run_eval_linear with shots): linear heads only, its linear grid; the
# refit adds nothing to the draw (the code's comment: "If few-shot is enabled, keep training set").
# Like the paper's linear probe, the draws train on augmented views (the linear preset's 10): the
# cached views of the whole split, which the study's linear runs read too, serve every draw.
PAPER_INNER: dict[str, dict[str, Any]] = {"linear": {"preset": "paper", "refit": False}}


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


def _patient_order(patients: np.ndarray) -> list[int]:
    """Positions of ``patients`` in patient ID order: numeric when every ID is a number (NIH IDs are
    zero-padded strings in the paper's tables, so string order there is numeric order)."""
    ids = [str(p) for p in patients]
    if all(i.isdigit() for i in ids):
        return sorted(range(len(ids)), key=lambda i: (int(ids[i]), ids[i]))
    return sorted(range(len(ids)), key=lambda i: ids[i])


def draw_nih(labels: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """The paper's NIH draw: for each label, the first ``n`` patients (ID order) whose every image
    carries it; every image of the chosen patients. A label with fewer such patients is an error."""
    y = np.asarray(labels)
    patients, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    carries = np.ones((len(patients), y.shape[1]), dtype=bool)
    np.logical_and.at(carries, inverse, y == 1)  # -1 (unknown) does not carry the label
    order = _patient_order(patients)
    chosen: set[int] = set()
    for c in range(y.shape[1]):
        qualifying = [p for p in order if carries[p, c]]
        if len(qualifying) < n:
            raise OptionError(
                "--set",
                f"fewshot.shots={n}: rule=nih needs {n} patient{'s' * (n != 1)} whose every training "
                f"image carries label {c}; it has {len(qualifying)}",
            )
        chosen.update(qualifying[:n])
    return np.flatnonzero(np.isin(inverse, sorted(chosen)))


def draw_evenly_spaced(size: int, n: int) -> np.ndarray:
    """The paper's draw for datasets other than NIH: ``n`` rows in all, round(i * size / n) for
    i < n (numpy's round: halves to even, as the paper's ``np.arange(...).round()``)."""
    if n > size:
        raise OptionError(
            "--set", f"fewshot.shots={n}: rule=evenly_spaced needs {n} images; the pool has {size}"
        )
    return np.round(np.arange(n) * (size / n)).astype(np.int64)


@dataclass(frozen=True)
class _Settings:
    """The resolved options of a few-shot run."""

    repeats: int
    protocols: tuple[str, ...]
    inner: dict[str, dict[str, Any]]
    preset: str
    rule: str | None
    pool: str

    def extra(self) -> dict[str, Any]:
        """What a summary's hparams add to the default run's: only the options that were used."""
        out: dict[str, Any] = {"preset": self.preset} if self.preset != "radprobe" else {}
        if self.rule is not None:
            out["rule"] = self.rule
        if self.pool != "train":
            out["pool"] = self.pool
        return out


def _settings(
    task: str,
    repeats: int | None,
    protocols: Sequence[str] | None,
    inner: dict[str, dict[str, Any]] | None,
    preset: str,
    rule: str | None,
    pool: str,
) -> _Settings:
    """Options checked and resolved; a request the chosen rule or preset cannot serve is one line."""
    if preset not in ("radprobe", "paper"):
        raise ValueError(f"preset must be 'radprobe' or 'paper', got {preset!r}")
    if rule is not None and rule not in RULES:
        raise OptionError("--set", f"fewshot.rule={rule!r}: expected one of {', '.join(RULES)}")
    if pool not in ("train", "train+val"):
        raise OptionError("--set", f"fewshot.pool={pool!r}: expected train or train+val")
    if preset == "paper" and rule is None:
        raise OptionError(
            "--set",
            "fewshot.preset=paper needs fewshot.rule: nih (NIH ChestX-ray14: n patients per label) "
            "or evenly_spaced (other datasets: n evenly spaced images)",
        )
    if rule == "nih" and task != "multilabel":
        raise OptionError(
            "--set", f"fewshot.rule=nih draws multi-label NIH ChestX-ray14; this is a {task} task"
        )
    if rule is not None and repeats is not None and repeats > 1:
        raise OptionError("--set", f"fewshot.repeats={repeats}: rule={rule} is one deterministic draw")
    paper = preset == "paper"
    chosen = tuple(protocols) if protocols is not None else (("linear",) if paper else tuple(INNER))
    if paper and set(chosen) != {"linear"}:
        raise OptionError(
            "--set", f"fewshot.protocols={list(chosen)}: the paper's few-shot runs are linear only"
        )
    base = PAPER_INNER if paper else DEFAULT_INNER
    merged = {**base, **(inner or {})}
    if paper and inner and "linear" in inner:
        merged["linear"] = {**PAPER_INNER["linear"], **inner["linear"]}
    n_repeats = repeats if repeats is not None else (1 if rule is not None else 5)
    return _Settings(n_repeats, chosen, merged, preset, rule, pool)


def train_views(options: dict[str, Any]) -> int:
    """Augmented views of each training image the inner linear probe reads (0: none)."""
    paper = options.get("preset") == "paper"
    chosen = options.get("protocols") or (("linear",) if paper else tuple(INNER))
    if "linear" not in chosen:
        return 0
    given = (options.get("inner") or {}).get("linear") or {}
    base = PAPER_INNER["linear"] if paper else DEFAULT_INNER.get("linear", {})
    return linear.train_views({**base, **given})


def run(
    data: ProtocolInput,
    shots: Sequence[Annotated[int, Ge(1)]] = DEFAULT_SHOTS,
    repeats: Annotated[int, Ge(1)] | None = None,
    protocols: Sequence[str] | None = None,
    inner: dict[str, dict[str, Any]] | None = None,
    preset: str = "radprobe",
    rule: str | None = None,
    pool: str = "train",
) -> ProtocolResult:
    """Run each inner protocol on every draw; one summary row per (shots, protocol).

    Defaults: 5 seeded draws (1 with a ``rule``), protocols knn, linear and logreg (``paper``: linear).
    """
    st = _settings(data.task, repeats, protocols, inner, preset, rule, pool)
    source = data.train if pool == "train" else data.train.concat(data.val)

    # every (shots, draw) subset first: batched protocols (linear) then train all of them at once
    def subset(n: int, r: int) -> np.ndarray:
        if st.rule == "nih":
            return draw_nih(source.labels, source.groups, n)
        if st.rule == "evenly_spaced":
            return draw_evenly_spaced(len(source), n)
        return draw(source.labels, source.groups, n, data.task, np.random.default_rng([data.seed, n, r]))

    subsets = [(n, r, subset(n, r)) for n in sorted(shots) for r in range(st.repeats)]
    inputs = [
        ProtocolInput(
            train=source.subset(idx),
            val=data.val,
            test=data.test,
            task=data.task,
            num_classes=data.num_classes,
            seed=data.seed + r,
        )
        for _, r, idx in subsets
    ]
    summaries: list[Summary] = []
    for proto in st.protocols:
        results = _run_inner(proto, inputs, st.inner.get(proto, {}))
        for n in sorted(shots):
            picked = [(r, idx, res) for (n_i, r, idx), res in zip(subsets, results, strict=True) if n_i == n]
            summaries.append(_summary(data, proto, n, picked, st))
    return ProtocolResult(
        scores=None,
        hparams={"shots": list(shots), "repeats": st.repeats, "protocols": list(st.protocols), **st.extra()},
        selected={},
        summaries=summaries,
    )


def _run_inner(proto: str, inputs: list[ProtocolInput], options: dict[str, Any]) -> list[ProtocolResult]:
    """Protocol ``proto`` on every draw (batched protocols train all draws in one pass)."""
    kw = dict(options)
    if proto in BATCHED:
        return BATCHED[proto](inputs, **kw)
    results = []
    for sub in inputs:
        sub_kw = dict(kw)
        if proto == "knn":
            sub_kw.setdefault("ks", [k for k in (1, 3, 5, *knn.DEFAULT_KS) if k <= len(sub.train)])
        results.append(INNER[proto](sub, **sub_kw))
    return results


def _summary(
    data: ProtocolInput,
    proto: str,
    n: int,
    picked: list[tuple[int, np.ndarray, ProtocolResult]],
    st: _Settings,
) -> Summary:
    """One (shots, protocol) row: the mean over draws of the test headline metric, with a
    t-interval over draws."""
    headline = HEADLINE[data.task][0]
    vals, selections, row_warnings, sizes = [], [], [], []
    for r, idx, res in picked:
        value, w = classification_metrics(data.test.labels, res.scores, data.task)
        vals.append(float(value[headline]))
        selections.append(res.selected)
        sizes.append(len(idx))
        row_warnings += [f"draw {r}: {x}" for x in w + res.warnings]
    if st.pool == "train+val":
        row_warnings.append(
            "pool=train+val: drawn images can be validation images, so selection on val is optimistic"
        )
    mean = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(vals) - 1) * sd / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
    low, high = mean - half, mean + half
    method = f"t-interval over {len(vals)} draws"
    if low < 0.0 or high > 1.0:  # every headline metric lies in [0, 1]; a t-interval need not
        low, high = max(low, 0.0), min(high, 1.0)
        method += ", clipped to [0, 1]"
    return Summary(
        protocol=f"fewshot-{proto}",
        metric=headline,
        value=mean,
        ci_low=low if len(vals) > 1 else None,
        ci_high=high if len(vals) > 1 else None,
        ci_method=method if len(vals) > 1 else "",
        hparams={"shots": n, "repeats": st.repeats, **st.inner.get(proto, {}), **st.extra()},
        selected={"values": vals, "sd": sd, "train_sizes": sizes, "per_draw": selections},
        warnings=sorted(set(row_warnings)),
    )
