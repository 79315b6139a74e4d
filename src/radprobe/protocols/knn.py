"""Weighted k-nearest-neighbour classification on frozen features (the DINOv2 protocol).

Features are L2-normalised; the k most cosine-similar bank samples vote with weight exp(sim / T).
Every k is served from one top-max(k) search done in chunks, so memory is O(chunk x N_bank) however
large the query set. k is chosen on validation with the train bank; the test set is then scored
once, with train (+ val, when ``bank="train+val"``) as the bank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from radprobe.protocols.base import ProtocolInput, ProtocolResult, validation_score

DEFAULT_KS = (10, 20, 100, 200)


def _normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)


def knn_scores(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    ks: Sequence[int],
    task: str,
    num_classes: int,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> dict[int, np.ndarray]:
    """Class scores (N_q, C) for every k: exp(sim/T)-weighted votes normalised to sum to 1.

    Multi-label: for each label, the weighted fraction of neighbours carrying it.
    """
    b = _normalize(bank)
    targets = torch.as_tensor(bank_labels)
    onehot = (
        targets.float()
        if task == "multilabel"
        else torch.nn.functional.one_hot(targets.long(), num_classes).float()
    )
    kmax = min(max(ks), len(b))
    out = {k: np.empty((len(queries), num_classes), dtype=np.float64) for k in ks}
    for start in range(0, len(queries), chunk):
        q = _normalize(queries[start : start + chunk])
        sim, idx = (q @ b.T).topk(kmax, dim=1)  # sorted, most similar first
        w = (sim / temperature).exp()
        votes = onehot[idx] * w[..., None]  # (n, kmax, C)
        csum_votes = votes.double().cumsum(1)
        csum_w = w.double().cumsum(1)
        for k in ks:
            kk = min(k, kmax)
            s = csum_votes[:, kk - 1] / csum_w[:, kk - 1, None]
            out[k][start : start + len(q)] = s.numpy()
    return out


def run(
    data: ProtocolInput,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.07,
    bank: str = "train",
) -> ProtocolResult:
    """kNN with k selected on validation; test scored once."""
    if bank not in ("train", "train+val"):
        raise ValueError(f"bank must be 'train' or 'train+val', got {bank!r}")
    ks = sorted(set(int(k) for k in ks))
    tr, va, te = data.train, data.val, data.test
    val_scores = knn_scores(tr.features, tr.labels, va.features, ks, data.task, data.num_classes, temperature)
    per_k = {k: validation_score(va.labels, s, data.task) for k, s in val_scores.items()}
    best_k = max(ks, key=lambda k: (per_k[k], -k))  # ties go to the smaller k
    if bank == "train+val":
        feats = np.concatenate([np.asarray(tr.features), np.asarray(va.features)])
        labels = np.concatenate([tr.labels, va.labels])
    else:
        feats, labels = tr.features, tr.labels
    test_scores = knn_scores(feats, labels, te.features, [best_k], data.task, data.num_classes, temperature)
    warnings = []
    if best_k > len(feats):
        warnings.append(f"k={best_k} exceeds the bank size {len(feats)}; all bank samples vote")
    return ProtocolResult(
        scores=test_scores[best_k],
        hparams={"ks": ks, "temperature": temperature, "bank": bank, "features": "cls"},
        selected={"k": best_k, "val_score": {str(k): v for k, v in per_k.items()}},
        warnings=warnings,
    )
