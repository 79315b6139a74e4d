from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from radprobe.protocols import logreg
from radprobe.protocols.base import ProtocolInput


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_torch_lbfgs_matches_sklearn(task):
    rng = np.random.default_rng(0)
    c = 2 if task == "binary" else 3
    x = rng.normal(size=(150, 6))
    y = (x[:, :c].argmax(1) + (rng.random(150) < 0.2)) % c
    for C in (0.01, 1.0):
        ref = LogisticRegression(C=C, max_iter=5000, tol=1e-10).fit(x, y)
        w, b = logreg.fit_torch(torch.tensor(x), torch.tensor(y), C, c, max_iter=500)
        p = logreg._scores_torch(torch.tensor(x), w, b, task)
        np.testing.assert_allclose(p, ref.predict_proba(x), atol=2e-4)


def test_sweep_selects_c_on_validation_and_backends_agree(toy):
    cs = (1e-4, 1e-2, 1.0)
    a = logreg.run(toy, cs=cs, backend="sklearn")
    b = logreg.run(toy, cs=cs, backend="torch")
    assert a.selected["C"] in cs
    assert a.selected["C"] == b.selected["C"]
    np.testing.assert_allclose(a.scores, b.scores, atol=2e-3)
    assert a.scores.shape == (len(toy.test), toy.num_classes)


def test_row_space_fit_equals_the_full_fit_when_samples_are_few(toy):
    few = ProtocolInput(
        toy.train.subset(np.arange(9)), toy.val, toy.test, task=toy.task, num_classes=toy.num_classes
    )
    assert few.train.features.shape[0] < few.train.features.shape[1]
    kw = dict(cs=[0.01, 0.1, 1.0], tol=1e-10, max_iter=5000)
    full = logreg.run(few, row_space=False, **kw)
    rot = logreg.run(few, row_space=True, **kw)
    assert rot.selected["row_space"] and not full.selected["row_space"]
    assert rot.selected["C"] == full.selected["C"]
    np.testing.assert_allclose(rot.scores, full.scores, atol=1e-5)
