from __future__ import annotations

import numpy as np
import pytest

from radprobe.protocols.base import ProtocolInput, SplitFeatures
from radprobe.protocols.knn import knn_scores, run


def _brute_force(bank, labels, queries, k, T, task, C):
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = np.zeros((len(queries), C))
    for i, q in enumerate(queries):
        q = q / np.linalg.norm(q)
        sim = b @ q
        order = np.argsort(-sim, kind="stable")[:k]
        w = np.exp(sim[order] / T)
        if task == "multilabel":
            votes = (labels[order] * w[:, None]).sum(0)
        else:
            votes = np.zeros(C)
            for j, wj in zip(order, w, strict=True):
                votes[labels[j]] += wj
        out[i] = votes / w.sum()
    return out


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_knn_matches_brute_force(task):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(150, 16))
    queries = rng.normal(size=(37, 16))
    C = 4
    labels = rng.integers(0, 2, size=(150, C)) if task == "multilabel" else rng.integers(0, C, size=150)
    got = knn_scores(bank, labels, queries, ks=(1, 5, 20, 200), task=task, num_classes=C, chunk=8)
    for k in (1, 5, 20):
        np.testing.assert_allclose(got[k], _brute_force(bank, labels, queries, k, 0.07, task, C), atol=1e-5)
    # k larger than the bank: every bank sample votes
    np.testing.assert_allclose(got[200], _brute_force(bank, labels, queries, 150, 0.07, task, C), atol=1e-5)


def _split(rng, n, centers, labels=None):
    y = rng.integers(0, len(centers), n) if labels is None else labels
    x = centers[y] + rng.normal(scale=0.5, size=(n, centers.shape[1]))
    return SplitFeatures(x, y, np.arange(n).astype(str))


def test_k_is_selected_on_validation_not_test():
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=3, size=(3, 8))
    tr, va = _split(rng, 120, centers), _split(rng, 60, centers)
    te = _split(rng, 60, centers)
    data = ProtocolInput(train=tr, val=va, test=te, task="multiclass", num_classes=3)
    res = run(data, ks=(1, 10, 50))
    # shuffling test labels must not change the selection
    te_shuffled = SplitFeatures(te.features, rng.permutation(te.labels), te.groups)
    res2 = run(
        ProtocolInput(train=tr, val=va, test=te_shuffled, task="multiclass", num_classes=3), ks=(1, 10, 50)
    )
    assert res.selected == res2.selected
    assert res.selected["k"] in (1, 10, 50)
    assert (res.scores.argmax(1) == te.labels).mean() > 0.9
    np.testing.assert_allclose(res.scores.sum(1), 1.0)


def _mlknn_brute(bank, y, queries, k, s=1.0):
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    n, n_labels = y.shape
    prior = (s + y.sum(0)) / (2 * s + n)
    sim = bn @ bn.T
    np.fill_diagonal(sim, -np.inf)
    counts = np.array([y[np.argsort(-sim[i], kind="stable")[:k]].sum(0) for i in range(n)])
    out = np.zeros((len(queries), n_labels))
    for lab in range(n_labels):
        c1 = np.array([((counts[:, lab] == j) & (y[:, lab] == 1)).sum() for j in range(k + 1)])
        c0 = np.array([((counts[:, lab] == j) & (y[:, lab] == 0)).sum() for j in range(k + 1)])
        for qi, q in enumerate(qn):
            cq = int(y[np.argsort(-(bn @ q), kind="stable")[:k], lab].sum())
            p1 = prior[lab] * (s + c1[cq]) / (s * (k + 1) + c1.sum())
            p0 = (1 - prior[lab]) * (s + c0[cq]) / (s * (k + 1) + c0.sum())
            out[qi, lab] = p1 / (p1 + p0)
    return out


def test_mlknn_matches_brute_force():
    from radprobe.protocols.knn import mlknn_scores

    rng = np.random.default_rng(3)
    bank, queries = rng.normal(size=(80, 6)), rng.normal(size=(15, 6))
    y = (rng.random((80, 3)) < 0.4).astype(int)
    got = mlknn_scores(bank, y, queries, ks=(3, 7), chunk=16)
    for k in (3, 7):
        np.testing.assert_allclose(got[k], _mlknn_brute(bank, y, queries, k), atol=1e-5)


def test_uniform_weighting_is_plain_majority_and_medmnist_preset():
    rng = np.random.default_rng(4)
    bank, queries = rng.normal(size=(60, 5)), rng.normal(size=(10, 5))
    y = rng.integers(0, 3, 60)
    got = knn_scores(bank, y, queries, ks=(11,), task="multiclass", num_classes=3, weighting="uniform")[11]
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    for i, q in enumerate(queries):
        nn = np.argsort(-(bn @ (q / np.linalg.norm(q))), kind="stable")[:11]
        np.testing.assert_allclose(got[i], np.bincount(y[nn], minlength=3) / 11)
    centers = rng.normal(scale=3, size=(3, 5))
    data = ProtocolInput(
        train=_split(rng, 90, centers),
        val=_split(rng, 30, centers),
        test=_split(rng, 30, centers),
        task="multiclass",
        num_classes=3,
    )
    res = run(data, preset="medmnist+")
    assert res.selected["k"] == 11 and res.hparams["weighting"] == "uniform"
