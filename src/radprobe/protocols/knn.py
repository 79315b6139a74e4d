"""Weighted k-nearest-neighbour classification on frozen features (the DINOv2 protocol).

Features are L2-normalised; the k most cosine-similar bank samples vote with weight exp(sim / T).
Every k is served from one top-max(k) search done in chunks, so memory is O(chunk x N_bank) however
large the query set. k is chosen on validation with the train bank; the test set is then scored
once, with train (+ val, when ``bank="train+val"``) as the bank.

Options: ``weighting="uniform"`` (plain majority), multi-label ``method="mlknn"`` (ML-kNN, Zhang &
Zhou 2007, a per-label Bayesian vote), and ``preset="medmnist+"`` (k = 11, plain majority) for
comparison with MedMNIST+ numbers.

``preset="paper"`` reproduces Baharoon et al. (arXiv 2312.02366; docs/paper-fidelity.md): ML-kNN as
scikit-multilearn computes it (smoothing 1, a training sample counts itself among its own k
neighbours), cosine similarity of L2-normalised class tokens, train + val as the bank, and every k of
(5, 20, 50, 100, 200) scored on test. The paper picks no k (val is in the bank), so this preset
returns one summary row per k instead of a single row of scores. It runs on multi-label tasks only:
the paper ran kNN on NIH ChestX-ray14 and CheXpert alone.

Multi-label labels of -1 are unknown (CheXpert ``uncertain=ignore``): a neighbour whose label j is
unknown casts no vote on label j, and ML-kNN counts, for each label, the k nearest bank samples whose
label is known.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch
from annotated_types import Ge, Gt

from radprobe.errors import OptionError
from radprobe.metrics.classification import HEADLINE, bootstrap_metrics
from radprobe.metrics.fast import validation_score
from radprobe.protocols.base import ProtocolInput, ProtocolResult, Summary

if TYPE_CHECKING:
    from radprobe.backbones.base import Preprocess

DEFAULT_KS = (10, 20, 100, 200)
PRESETS = {
    "dinov2": {"ks": DEFAULT_KS, "temperature": 0.07, "weighting": "exp"},
    "medmnist+": {"ks": (11,), "temperature": 0.07, "weighting": "uniform"},
    # Baharoon et al.: dinov2/eval/classification/mlknn.py (nb_knn, train + val bank) and
    # dinov2/eval/utils.py (MLkNN: s = 1, cosine NearestNeighbors, ignore_first_neighbours = 0)
    # mlknn.py:177: make_classification_eval_transform(), resize 256 then centre-crop 224
    "paper": {
        "ks": (5, 20, 50, 100, 200),
        "method": "mlknn",
        "bank": "train+val",
        "smoothing": 1.0,
        "center_crop": True,
    },
}
CROP_RATIO = 256 / 224  # DINOv2's kNN eval transform: resize to 256, centre-crop 224
EVAL_VIEW = "resize to 256/224 of the input size, centre crop"


def center_crops(options: dict[str, Any]) -> bool:
    """Whether a run with ``options`` reads centre-cropped features (the paper's kNN eval view)."""
    given = options.get("center_crop")
    if given is not None:
        return bool(given)
    return bool(PRESETS.get(options.get("preset", "dinov2"), {}).get("center_crop", False))


def eval_preprocess(options: dict[str, Any], preprocess: Preprocess) -> Preprocess:
    """The preprocessing of the features a run with ``options`` reads: the backbone's own, or with
    ``center_crop`` the image resized to 256/224 of the input size and centre-cropped to it."""
    if not center_crops(options):
        return preprocess
    return replace(preprocess, crop_from=round(preprocess.resolution * CROP_RATIO))


def _normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: cached features are read-only maps
    return torch.nn.functional.normalize(t, dim=1)


def _neighbours(
    bank: torch.Tensor, queries: np.ndarray, k: int, chunk: int, exclude_self: bool = False
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(start, sims, indices) of the k most similar bank rows, most similar first, chunk by chunk."""
    for start in range(0, len(queries), chunk):
        q = _normalize(queries[start : start + chunk])
        sim = q @ bank.T
        if exclude_self:  # queries are the bank itself: a sample is not its own neighbour
            rows = torch.arange(len(q))
            sim[rows, rows + start] = -float("inf")
        s, i = sim.topk(k, dim=1)
        yield start, s, i


def knn_scores(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    ks: Sequence[int],
    task: str,
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 1024,
    weighting: str = "exp",
) -> dict[int, np.ndarray]:
    """Class scores (N_q, C) for every k: weighted votes normalised to sum to 1.

    Multi-label: for each label, the weighted fraction of the neighbours whose label is known (!= -1)
    that carry it; where none of the k neighbours has it known, the bank's rate of that label.
    """
    if weighting not in ("exp", "uniform"):
        raise ValueError(f"weighting must be 'exp' or 'uniform', got {weighting!r}")
    b = _normalize(bank)
    targets = torch.as_tensor(np.asarray(bank_labels))
    multilabel = task == "multilabel"
    if multilabel:
        onehot = (targets == 1).float()
        known = (targets != -1).float()
        prior = (onehot.sum(0) / known.sum(0).clamp_min(1)).double()
    else:
        onehot = torch.nn.functional.one_hot(targets.long(), num_classes).float()
    kmax = min(max(ks), len(b))
    out = {k: np.empty((len(queries), num_classes), dtype=np.float64) for k in ks}
    for start, sim, idx in _neighbours(b, queries, kmax, chunk):
        w = (sim / temperature).exp() if weighting == "exp" else torch.ones_like(sim)
        csum_votes = (onehot[idx] * w[..., None]).double().cumsum(1)  # (n, kmax, C)
        # the vote's denominator per label: only neighbours that know the label
        csum_w = (
            (known[idx] * w[..., None]).double().cumsum(1) if multilabel else w.double().cumsum(1)[..., None]
        )
        for k in ks:
            kk = min(k, kmax)
            votes, weight = csum_votes[:, kk - 1], csum_w[:, kk - 1]
            scores = votes / weight
            if multilabel:
                scores = torch.where(weight > 0, scores, prior.expand_as(scores))
            out[k][start : start + len(sim)] = scores.numpy()
    return out


def _label_neighbour_counts(
    bank: torch.Tensor, y: torch.Tensor, queries: np.ndarray, kmax: int, chunk: int, exclude_self: bool
) -> torch.Tensor:
    """(N_q, kmax, L): for each label, the running count of positives among the nearest bank samples
    whose label is known (-1 entries of ``y`` are unknown)."""
    known = y != -1
    pos = (y == 1).float()
    partial = [j for j in range(y.shape[1]) if not bool(known[:, j].all())]
    out = torch.empty(len(queries), kmax, y.shape[1])
    for start in range(0, len(queries), chunk):
        q = _normalize(queries[start : start + chunk])
        sim = q @ bank.T
        if exclude_self:
            rows = torch.arange(len(q))
            sim[rows, rows + start] = -float("inf")
        _, idx = sim.topk(kmax, dim=1)
        block = pos[idx]  # (n, kmax, L): labels every bank sample knows share one search
        for j in partial:  # labels with unknowns: search again among the samples that know them
            s_j, i_j = sim.masked_fill(~known[:, j], -float("inf")).topk(kmax, dim=1)
            # a bank with fewer than kmax known samples pads with -inf rows, which count for nothing
            block[:, :, j] = pos[i_j, j] * torch.isfinite(s_j)
        out[start : start + len(q)] = block.cumsum(1)
    return out


def mlknn_scores(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    ks: Sequence[int],
    smoothing: float = 1.0,
    chunk: int = 1024,
    exclude_self: bool = True,
) -> dict[int, np.ndarray]:
    """ML-kNN posteriors P(label | neighbour counts) (N_q, L) for every k.

    Per label, priors, likelihood tables and neighbour counts use only bank samples whose label is
    known (!= -1). ``exclude_self=False`` counts each bank sample among its own k neighbours when
    the likelihood tables are built, as scikit-multilearn's MLkNN does (``ignore_first_neighbours=0``).
    """
    b = _normalize(bank)
    y = torch.as_tensor(np.asarray(bank_labels))
    n, n_labels = y.shape
    pos, neg = (y == 1).float(), (y == 0).float()
    kmax = min(max(ks), n - 1 if exclude_self else n)
    s = smoothing
    prior1 = (s + pos.sum(0)) / (2 * s + pos.sum(0) + neg.sum(0))
    train_csum = _label_neighbour_counts(b, y, np.asarray(bank), kmax, chunk, exclude_self=exclude_self)
    query_csum = _label_neighbour_counts(b, y, queries, kmax, chunk, exclude_self=False)
    out = {}
    for k in ks:
        kk = min(k, kmax)
        counts = train_csum[:, kk - 1].long()  # (N, L) neighbours carrying each label
        c1 = torch.zeros(kk + 1, n_labels)
        c0 = torch.zeros(kk + 1, n_labels)
        c1.scatter_add_(0, counts, pos)
        c0.scatter_add_(0, counts, neg)
        like1 = (s + c1) / (s * (kk + 1) + c1.sum(0))
        like0 = (s + c0) / (s * (kk + 1) + c0.sum(0))
        q = query_csum[:, kk - 1].long()
        p1 = prior1 * like1.gather(0, q)
        p0 = (1 - prior1) * like0.gather(0, q)
        out[k] = (p1 / (p1 + p0)).double().numpy()
    return out


def run(
    data: ProtocolInput,
    ks: Sequence[Annotated[int, Ge(1)]] | None = None,
    temperature: Annotated[float, Gt(0)] | None = None,
    bank: str | None = None,
    weighting: str | None = None,
    method: str | None = None,
    preset: str = "dinov2",
    smoothing: Annotated[float, Gt(0)] | None = None,
    center_crop: bool | None = None,
) -> ProtocolResult:
    """kNN with k selected on validation; test scored once (``preset="paper"``: every k on test).

    ``bank`` defaults to train, ``method`` to the weighted vote; ``smoothing`` is ML-kNN's Laplace s
    (default 1). ``center_crop`` (the ``paper`` preset's): the features come from images resized to
    256/224 of the input size and centre-cropped (:func:`eval_preprocess`; the runner extracts them).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    crop = center_crops({"preset": preset, "center_crop": center_crop})
    if preset == "paper":
        result = _run_paper(data, ks, temperature, bank, weighting, method, smoothing)
    else:
        result = _run(data, ks, temperature, bank, weighting, method, smoothing, preset)
    if crop:  # runs on the input-size features keep the keys they always had
        result.hparams = {**result.hparams, "eval_view": EVAL_VIEW}
        for sm in result.summaries:
            sm.hparams = {**sm.hparams, "eval_view": EVAL_VIEW}
    return result


def _run(
    data: ProtocolInput,
    ks: Sequence[int] | None,
    temperature: float | None,
    bank: str | None,
    weighting: str | None,
    method: str | None,
    smoothing: float | None,
    preset: str,
) -> ProtocolResult:
    """The weighted vote (or ML-kNN) with k chosen on validation."""
    bank = bank or "train"
    method = method or "vote"
    if bank not in ("train", "train+val"):
        raise ValueError(f"bank must be 'train' or 'train+val', got {bank!r}")
    if method not in ("vote", "mlknn") or (method == "mlknn" and data.task != "multilabel"):
        raise ValueError(f"method must be 'vote', or 'mlknn' for multi-label tasks; got {method!r}")
    if smoothing is not None and method != "mlknn":
        raise ValueError(f"smoothing={smoothing!r} is ML-kNN's; it needs method='mlknn'")
    p = PRESETS[preset]
    ks = sorted({int(k) for k in (ks if ks is not None else p["ks"])})
    temperature = p["temperature"] if temperature is None else temperature
    weighting = weighting or p["weighting"]

    def scores(feats: np.ndarray, labels: np.ndarray, queries: np.ndarray, kk: list[int]) -> dict:
        if method == "mlknn":
            return mlknn_scores(feats, labels, queries, kk, smoothing=1.0 if smoothing is None else smoothing)
        return knn_scores(
            feats, labels, queries, kk, data.task, data.num_classes, temperature, weighting=weighting
        )

    tr, va, te = data.train, data.val, data.test
    per_k = {
        k: validation_score(va.labels, s, data.task)
        for k, s in scores(tr.features, tr.labels, va.features, ks).items()
    }
    best_k = max(ks, key=lambda k: (per_k[k], -k))  # ties go to the smaller k
    feats, labels = _bank(data, bank)
    warnings = []
    if best_k > len(feats):
        warnings.append(f"k={best_k} exceeds the bank size {len(feats)}; all bank samples vote")
    hparams = {
        "ks": ks,
        "temperature": temperature,
        "weighting": weighting,
        "method": method,
        "preset": preset,
        "bank": bank,
        "features": "cls",
    }
    if smoothing is not None:  # only when set: runs that leave it out keep their keys
        hparams["smoothing"] = smoothing
    return ProtocolResult(
        scores=scores(feats, labels, te.features, [best_k])[best_k],
        hparams=hparams,
        selected={"k": best_k, "val_score": {str(k): v for k, v in per_k.items()}},
        warnings=warnings,
    )


def _bank(data: ProtocolInput, bank: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of the neighbour bank: train, or train followed by val."""
    tr, va = data.train, data.val
    if bank == "train+val":
        return (
            np.concatenate([np.asarray(tr.features), np.asarray(va.features)]),
            np.concatenate([tr.labels, va.labels]),
        )
    return np.asarray(tr.features), tr.labels


def _check_paper(
    task: str,
    temperature: float | None,
    bank: str | None,
    weighting: str | None,
    method: str | None,
) -> None:
    """One line for a ``preset="paper"`` request the paper's kNN never ran."""
    if task != "multilabel":
        raise OptionError(
            "--set",
            f"knn.preset=paper: the paper ran kNN (ML-kNN) on multi-label datasets only "
            f"(NIH ChestX-ray14, CheXpert); this is a {task} task",
        )
    p = PRESETS["paper"]
    for name, value, wanted in (("method", method, p["method"]), ("bank", bank, p["bank"])):
        if value is not None and value != wanted:
            raise OptionError("--set", f"knn.{name}={value!r}: preset=paper uses {name}={wanted!r}")
    for name, value in (("temperature", temperature), ("weighting", weighting)):
        if value is not None:
            raise OptionError("--set", f"knn.{name}={value!r}: ML-kNN (preset=paper) takes no {name}")


def _run_paper(
    data: ProtocolInput,
    ks: Sequence[int] | None,
    temperature: float | None,
    bank: str | None,
    weighting: str | None,
    method: str | None,
    smoothing: float | None,
) -> ProtocolResult:
    """ML-kNN on the train + val bank, every k scored on test: one summary row per k."""
    _check_paper(data.task, temperature, bank, weighting, method)
    p = PRESETS["paper"]
    ks = sorted({int(k) for k in (ks if ks is not None else p["ks"])})
    s = p["smoothing"] if smoothing is None else smoothing
    feats, labels = _bank(data, p["bank"])
    te = data.test
    per_k = mlknn_scores(feats, labels, te.features, ks, smoothing=s, exclude_self=False)
    headline = HEADLINE[data.task][0]
    hparams = {"method": "mlknn", "preset": "paper", "bank": p["bank"], "smoothing": s, "features": "cls"}
    summaries = []
    for k in ks:
        # the point estimate and a patient-bootstrap CI, as a scored row would carry
        m = next(
            v
            for v in bootstrap_metrics(te.labels, per_k[k], data.task, te.groups, data.n_boot, data.seed)
            if v.name == headline
        )
        warn = [f"k={k} exceeds the bank size {len(feats)}; all bank samples vote"] if k > len(feats) else []
        summaries.append(
            Summary(
                protocol="knn",
                metric=headline,
                value=m.value,
                ci_low=m.ci_low,
                ci_high=m.ci_high,
                ci_method=f"patient bootstrap, {data.n_boot} resamples",
                hparams={**hparams, "k": k},
                selected={"k": k, "selection": "none: the paper reports every k on test"},
                warnings=warn + m.warnings,
            )
        )
    return ProtocolResult(scores=None, hparams={**hparams, "ks": ks}, selected={}, summaries=summaries)
