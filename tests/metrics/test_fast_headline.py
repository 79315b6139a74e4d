from __future__ import annotations

import numpy as np
import pytest

from radprobe.metrics.classification import HEADLINE, classification_metrics
from radprobe.metrics.fast import headline_scores


def _reference(y, s, task):
    vals, _ = classification_metrics(y, s, task)
    v = vals[HEADLINE[task][0]]
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
