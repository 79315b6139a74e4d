from __future__ import annotations

import numpy as np
import pytest
from metric_reference import cluster_resample, sklearn_metrics

from radprobe.metrics.classification import HEADLINE
from radprobe.metrics.fast import headline_scores


def _reference(y, s, task):
    v = sklearn_metrics(y, s, task)[HEADLINE[task][0]]
    return v if np.isfinite(v) else -np.inf


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_headline_scores_equal_sklearn_per_head_with_ties(task):
    rng = np.random.default_rng(0)
    n, c = 40, 2 if task == "binary" else 4
    y = rng.integers(0, 2, (n, c)) if task == "multilabel" else rng.integers(0, c, n)
    # rounded scores make ties, which AUROC must count one half
    probs = np.round(rng.random((7, n, c)), 1)
    got = headline_scores(y, probs, task)
    want = [_reference(y, p, task) for p in probs]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_unknown_labels_are_left_out_and_undefined_gives_minus_inf():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (30, 3))
    y[::3, 0] = -1
    y[:, 2] = 0  # no positives: left out of the macro average
    probs = rng.random((5, 30, 3))
    got = headline_scores(y, probs, "multilabel")
    from sklearn.metrics import roc_auc_score

    for h in range(5):
        k = y[:, 0] != -1
        want = np.mean([roc_auc_score(y[k, 0], probs[h, k, 0]), roc_auc_score(y[:, 1], probs[h, :, 1])])
        assert np.isclose(got[h], want)
    assert np.all(headline_scores(np.zeros(10, int), rng.random((2, 10, 2)), "binary") == -np.inf)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_weighted_resample_metrics_equal_sklearn_on_the_duplicated_rows(task):
    from radprobe.metrics.fast import bootstrap_weights, weighted_headline_metrics

    rng = np.random.default_rng(5)
    n, c = 36, 2 if task == "binary" else 3
    if task == "multilabel":
        y = rng.integers(0, 2, (n, c))
        y[::5, 1] = -1
    else:
        y = rng.integers(0, c, n)
    scores = np.round(rng.random((n, c)), 1)  # ties
    groups = np.array([f"p{i // 3}" for i in range(n)])
    w = bootstrap_weights(groups, 40, np.random.default_rng(9))
    fast = weighted_headline_metrics(y, scores, task, w)
    ref_rng = np.random.default_rng(9)
    for b in range(40):
        idx = cluster_resample(groups, ref_rng)
        assert np.array_equal(np.bincount(idx, minlength=n), w[b])  # the same resample
        vals = sklearn_metrics(y[idx], scores[idx], task)
        for m in HEADLINE[task]:
            want = vals[m]
            if np.isfinite(want):
                assert np.isclose(fast[m][b], want, atol=1e-12), (m, b)
            else:
                assert not np.isfinite(fast[m][b]), (m, b)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_bootstrap_cis_equal_the_per_resample_sklearn_loop(task):
    from radprobe.metrics.classification import bootstrap_metrics

    rng = np.random.default_rng(11)
    n, c = 60, 2 if task == "binary" else 3
    y = rng.integers(0, 2, (n, c)) if task == "multilabel" else rng.integers(0, c, n)
    scores = rng.random((n, c))
    groups = np.array([f"p{i // 2}" for i in range(n)])
    got = {m.name: m for m in bootstrap_metrics(y, scores, task, groups, n_boot=200, seed=3)}
    ref_rng = np.random.default_rng(3)
    samples: dict[str, list[float]] = {m: [] for m in got}
    for _ in range(200):
        idx = cluster_resample(groups, ref_rng)
        vals = sklearn_metrics(y[idx], scores[idx], task)
        for m in got:
            if np.isfinite(vals[m]):
                samples[m].append(vals[m])
    for m, mv in got.items():
        lo, hi = np.quantile(samples[m], [0.025, 0.975])
        assert np.isclose(mv.ci_low, lo, atol=1e-12) and np.isclose(mv.ci_high, hi, atol=1e-12), m
