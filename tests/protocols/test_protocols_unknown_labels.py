"""Unknown (-1) multi-label labels in kNN, ML-kNN and logistic regression: neither positive nor negative."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from radprobe.protocols import knn, logreg
from radprobe.protocols.base import ProtocolInput, SplitFeatures
from radprobe.protocols.knn import knn_scores, mlknn_scores


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _with_unknowns(rng: np.random.Generator, n: int, c: int, frac: float = 0.3) -> np.ndarray:
    y = (rng.random((n, c)) < 0.4).astype(np.int64)
    y[rng.random((n, c)) < frac] = -1
    return y


def _vote_brute(bank, y, queries, k, temperature=0.07):
    b, q = _unit(bank), _unit(queries)
    prior = np.array([(y[:, j] == 1).sum() / max((y[:, j] != -1).sum(), 1) for j in range(y.shape[1])])
    out = np.zeros((len(q), y.shape[1]))
    for i in range(len(q)):
        sim = b @ q[i]
        nn = np.argsort(-sim, kind="stable")[:k]
        w = np.exp(sim[nn] / temperature)
        for j in range(y.shape[1]):
            known = y[nn, j] != -1
            out[i, j] = (w * (y[nn, j] == 1)).sum() / w[known].sum() if known.any() else prior[j]
    return out


def test_knn_vote_ignores_unknown_neighbour_labels():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(90, 8)), rng.normal(size=(25, 8))
    y = _with_unknowns(rng, 90, 4)
    y[:, 3] = np.where(np.arange(90) < 80, -1, y[:, 3])  # a mostly unknown label: some queries fall back
    got = knn_scores(bank, y, queries, ks=(1, 5, 20), task="multilabel", num_classes=4, chunk=7)
    for k in (1, 5, 20):
        np.testing.assert_allclose(got[k], _vote_brute(bank, y, queries, k), atol=1e-6)


def _mlknn_one_label(bank, y, queries, k, s=1.0):
    """Textbook ML-kNN of one fully known label."""
    b, q = _unit(bank), _unit(queries)
    n = len(y)
    prior = (s + y.sum()) / (2 * s + n)
    sim = b @ b.T
    np.fill_diagonal(sim, -np.inf)
    counts = np.array([y[np.argsort(-sim[i], kind="stable")[:k]].sum() for i in range(n)])
    c1 = np.array([((counts == j) & (y == 1)).sum() for j in range(k + 1)])
    c0 = np.array([((counts == j) & (y == 0)).sum() for j in range(k + 1)])
    out = np.zeros(len(q))
    for i in range(len(q)):
        cq = int(y[np.argsort(-(b @ q[i]), kind="stable")[:k]].sum())
        p1 = prior * (s + c1[cq]) / (s * (k + 1) + c1.sum())
        p0 = (1 - prior) * (s + c0[cq]) / (s * (k + 1) + c0.sum())
        out[i] = p1 / (p1 + p0)
    return out


def test_mlknn_uses_for_each_label_only_samples_that_know_it():
    rng = np.random.default_rng(1)
    bank, queries = rng.normal(size=(70, 6)), rng.normal(size=(12, 6))
    y = _with_unknowns(rng, 70, 3)
    y[:, 0] = np.abs(y[:, 0])  # one label fully known: served by the shared search
    got = mlknn_scores(bank, y, queries, ks=(3, 7), chunk=16)
    for k in (3, 7):
        for j in range(3):
            known = y[:, j] != -1
            ref = _mlknn_one_label(bank[known], y[known, j], queries, k)
            np.testing.assert_allclose(got[k][:, j], ref, atol=1e-5)


def _ml_split(rng, n, centers):
    y = (rng.random((n, len(centers))) < 0.4).astype(np.int64)
    x = y @ centers + rng.normal(scale=0.8, size=(n, centers.shape[1]))
    y[rng.random(y.shape) < 0.25] = -1
    return SplitFeatures(x.astype(np.float32), y, np.arange(n).astype(str))


def test_logreg_fits_each_label_on_its_known_samples():
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=2.0, size=(3, 6))
    data = ProtocolInput(
        *(_ml_split(rng, n, centers) for n in (80, 40, 40)), task="multilabel", num_classes=3
    )
    c = 0.5
    res = logreg.run(data, cs=[c], backend="sklearn")
    x_tr = np.asarray(data.train.features, dtype=np.float64)
    for j in range(3):
        known = data.train.labels[:, j] != -1
        ref = LogisticRegression(C=c, max_iter=1000, tol=1e-4).fit(x_tr[known], data.train.labels[known, j])
        expected = ref.predict_proba(np.asarray(data.test.features, dtype=np.float64))[:, 1]
        np.testing.assert_allclose(res.scores[:, j], expected, atol=1e-4)
    # the torch objective masks the unknowns the same way
    torch_res = logreg.run(data, cs=[c], backend="torch")
    np.testing.assert_allclose(torch_res.scores, res.scores, atol=2e-3)


@pytest.mark.parametrize("method", ["vote", "mlknn"])
def test_knn_does_not_treat_unknowns_as_negatives(method):
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=2.0, size=(3, 6))
    data = ProtocolInput(
        *(_ml_split(rng, n, centers) for n in (80, 40, 40)), task="multilabel", num_classes=3
    )
    res = knn.run(data, ks=(5, 10), method=method)
    as_negative = SplitFeatures(
        data.train.features, np.where(data.train.labels == -1, 0, data.train.labels), data.train.groups
    )
    other = knn.run(
        ProtocolInput(as_negative, data.val, data.test, "multilabel", 3), ks=(5, 10), method=method
    )
    # treating unknowns as negatives is a different model: the scores must differ
    assert not np.allclose(res.scores, other.scores)
    assert np.all((res.scores >= 0) & (res.scores <= 1))
