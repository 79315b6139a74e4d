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


# --- refit and preset="paper" (Baharoon et al.; docs/paper-fidelity.md) ---------------------------


@pytest.mark.parametrize("toy", ["binary", "multiclass"], indirect=True)
def test_refit_fits_the_chosen_c_again_on_train_plus_val(toy):
    cs = (1e-3, 1e-1, 10.0)
    plain = logreg.run(toy, cs=cs, backend="sklearn")
    refit = logreg.run(toy, cs=cs, backend="sklearn", refit=True)
    assert refit.selected == plain.selected  # C is chosen before the refit
    assert not np.allclose(refit.scores, plain.scores, atol=1e-4)
    x = np.concatenate([toy.train.features, toy.val.features]).astype(np.float64)
    y = np.concatenate([toy.train.labels, toy.val.labels])
    ref = LogisticRegression(C=refit.selected["C"], max_iter=1000, tol=1e-4).fit(x, y)
    np.testing.assert_allclose(
        refit.scores, ref.predict_proba(toy.test.features.astype(np.float64)), atol=1e-4
    )
    assert refit.hparams["refit"] is True and "refit" not in plain.hparams


@pytest.mark.parametrize("toy", ["multilabel"], indirect=True)
def test_paper_preset_refuses_multilabel_tasks_in_one_line(toy):
    from radprobe.errors import OptionError

    with pytest.raises(OptionError, match="never ran on multi-label") as err:
        logreg.run(toy, preset="paper")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("toy", ["binary", "multiclass"], indirect=True)
def test_paper_preset_has_the_papers_c_grid_solver_and_selection(toy):
    p = logreg.PRESETS["paper"]
    np.testing.assert_allclose(p["cs"], 10.0 ** np.linspace(-6, 5, 45))
    assert (len(p["cs"]), p["max_iter"], p["tol"], p["refit"]) == (45, 1000, 1e-12, True)
    res = logreg.run(toy, preset="paper", cs=(1e-4, 1e-2, 1.0), backend="sklearn")
    assert res.hparams["tol"] == 1e-12 and res.hparams["refit"] and res.hparams["preset"] == "paper"
    # C is chosen on top-1 accuracy, whatever the task's headline metric
    acc = {}
    for c in (1e-4, 1e-2, 1.0):
        m = LogisticRegression(C=c, max_iter=1000, tol=1e-12).fit(toy.train.features, toy.train.labels)
        acc[c] = (m.predict(toy.val.features) == toy.val.labels).mean()
    assert np.isclose(res.selected["val_score"], max(acc.values()))
    assert res.selected["C"] == min(c for c in acc if acc[c] == max(acc.values()))


def test_default_logreg_hparams_are_unchanged(toy):
    res = logreg.run(toy, cs=(1.0,), backend="sklearn")
    assert set(res.hparams) == {"cs", "max_iter", "tol", "backend", "features"}
    assert res.hparams["tol"] == 1e-4


def test_shuffled_test_labels_change_nothing_that_was_selected(toy):
    """C is chosen on validation: scrambling the test labels can change the score, never the choice."""
    rng = np.random.default_rng(3)
    shuffled = type(toy.test)(toy.test.features, rng.permutation(toy.test.labels), toy.test.groups)
    scrambled = ProtocolInput(toy.train, toy.val, shuffled, toy.task, toy.num_classes, seed=toy.seed)
    cs = (1e-4, 1e-2, 1.0, 100.0)
    a, b = logreg.run(toy, cs=cs), logreg.run(scrambled, cs=cs)
    assert a.selected == b.selected
    np.testing.assert_array_equal(a.scores, b.scores)  # the same fit scores the same test features
