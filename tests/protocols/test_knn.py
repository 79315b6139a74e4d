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


# --- preset="paper" (Baharoon et al.; docs/paper-fidelity.md) -------------------------------------


def _mlknn_reference(bank, y, queries, k, s, include_self):
    """ML-kNN written out per sample and label: cosine neighbours, Laplace smoothing s; with
    ``include_self`` a bank sample is among its own k neighbours (scikit-multilearn's MLkNN)."""
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    n, n_labels = y.shape
    out = np.zeros((len(queries), n_labels))
    for lab in range(n_labels):
        prior = (s + y[:, lab].sum()) / (2 * s + n)
        c1, c0 = np.zeros(k + 1), np.zeros(k + 1)
        for i in range(n):
            sim = bn @ bn[i]
            if not include_self:
                sim[i] = -np.inf
            delta = int(y[np.argsort(-sim, kind="stable")[:k], lab].sum())
            (c1 if y[i, lab] == 1 else c0)[delta] += 1
        for qi, q in enumerate(qn):
            delta = int(y[np.argsort(-(bn @ q), kind="stable")[:k], lab].sum())
            p1 = prior * (s + c1[delta]) / (s * (k + 1) + c1.sum())
            p0 = (1 - prior) * (s + c0[delta]) / (s * (k + 1) + c0.sum())
            out[qi, lab] = p1 / (p1 + p0)
    return out


def test_mlknn_can_count_a_bank_sample_among_its_own_neighbours_as_scikit_multilearn_does():
    from radprobe.protocols.knn import mlknn_scores

    rng = np.random.default_rng(5)
    bank, queries = rng.normal(size=(70, 6)), rng.normal(size=(12, 6))
    y = (rng.random((70, 3)) < 0.4).astype(int)
    with_self = mlknn_scores(bank, y, queries, ks=(1, 5), chunk=16, exclude_self=False)
    without = mlknn_scores(bank, y, queries, ks=(1, 5), chunk=16)
    for k in (1, 5):
        ref = _mlknn_reference(bank, y, queries, k, 1.0, include_self=True)
        np.testing.assert_allclose(with_self[k], ref, atol=1e-5)
        assert not np.allclose(with_self[k], without[k], atol=1e-3)
    # smoothing s is really used: s = 0.5 gives other posteriors
    half = mlknn_scores(bank, y, queries, ks=(5,), smoothing=0.5, exclude_self=False)[5]
    np.testing.assert_allclose(half, _mlknn_reference(bank, y, queries, 5, 0.5, True), atol=1e-5)
    assert not np.allclose(half, with_self[5], atol=1e-3)


def _multilabel_input(rng, sizes=(150, 70, 40), labels=3, dim=8):
    centers = rng.normal(scale=2.0, size=(labels, dim))
    splits = []
    for n in sizes:
        y = (rng.random((n, labels)) < 0.4).astype(int)
        y[0], y[1] = 1, 0  # every label has positives and negatives in every split
        x = y @ centers + rng.normal(size=(n, dim))
        splits.append(SplitFeatures(x, y, np.array([f"p{i // 2}" for i in range(n)])))
    return ProtocolInput(*splits, task="multilabel", num_classes=labels, seed=0)


def test_paper_preset_scores_every_k_of_its_grid_on_test_with_the_train_plus_val_bank():
    from radprobe.metrics.classification import classification_metrics

    rng = np.random.default_rng(6)
    data = _multilabel_input(rng)
    res = run(data, preset="paper")
    assert res.scores is None
    assert [s.hparams["k"] for s in res.summaries] == [5, 20, 50, 100, 200]
    assert all(s.hparams["smoothing"] == 1.0 and s.hparams["bank"] == "train+val" for s in res.summaries)
    bank = np.concatenate([data.train.features, data.val.features])
    y = np.concatenate([data.train.labels, data.val.labels])
    for s in res.summaries[:2]:  # k = 5 and 20 against the reference (the larger k are slow to write out)
        ref = _mlknn_reference(bank, y, data.test.features, s.hparams["k"], 1.0, include_self=True)
        expected = classification_metrics(data.test.labels, ref, "multilabel")[0]["auroc_macro"]
        assert s.metric == "auroc_macro" and np.isclose(s.value, expected)
        assert s.ci_low <= s.value <= s.ci_high
        # a train-only bank gives other scores: val really is in the bank
        train_only = _mlknn_reference(
            data.train.features, data.train.labels, data.test.features, s.hparams["k"], 1.0, True
        )
        assert not np.isclose(
            s.value, classification_metrics(data.test.labels, train_only, "multilabel")[0]["auroc_macro"]
        )
    # nothing is selected: the test labels decide no k
    assert all(s.selected["selection"].startswith("none") for s in res.summaries)


@pytest.mark.parametrize(
    ("task", "options", "words"),
    [
        ("multiclass", {}, "multi-label datasets only"),
        ("binary", {}, "multi-label datasets only"),
        ("multilabel", {"method": "vote"}, "knn.method='vote'"),
        ("multilabel", {"bank": "train"}, "knn.bank='train'"),
        ("multilabel", {"temperature": 0.1}, "takes no temperature"),
    ],
)
def test_paper_preset_refuses_what_the_paper_never_ran_in_one_line(task, options, words):
    from radprobe.errors import OptionError

    rng = np.random.default_rng(7)
    if task == "multilabel":
        data = _multilabel_input(rng, sizes=(30, 10, 10))
    else:
        c = 3 if task == "multiclass" else 2
        centers = rng.normal(size=(c, 4))
        data = ProtocolInput(*(_split(rng, 20, centers) for _ in range(3)), task=task, num_classes=c)
    with pytest.raises(OptionError, match=words) as err:
        run(data, preset="paper", **options)
    assert "\n" not in str(err.value)


def test_default_knn_hparams_do_not_gain_the_new_options():
    rng = np.random.default_rng(8)
    centers = rng.normal(scale=3, size=(3, 5))
    data = ProtocolInput(*(_split(rng, 40, centers) for _ in range(3)), task="multiclass", num_classes=3)
    assert set(run(data).hparams) == {
        "ks",
        "temperature",
        "weighting",
        "method",
        "preset",
        "bank",
        "features",
    }
    ml = _multilabel_input(rng, sizes=(40, 20, 20))
    assert "smoothing" not in run(ml, method="mlknn").hparams
    assert run(ml, method="mlknn", smoothing=0.5).hparams["smoothing"] == 0.5


def test_paper_preset_reads_centre_cropped_features_and_says_so():
    from radprobe.backbones.base import Preprocess
    from radprobe.protocols import knn

    pp = Preprocess(resolution=224, patch_size=14, minmax=True)
    # mlknn.py:177: make_classification_eval_transform(), i.e. Resize((256, 256)) + CenterCrop(224)
    assert knn.eval_preprocess({"preset": "paper"}, pp) == Preprocess(
        resolution=224, patch_size=14, minmax=True, crop_from=256
    )
    assert (
        knn.eval_preprocess({}, pp) is pp
        and knn.eval_preprocess({"preset": "paper", "center_crop": False}, pp) is pp
    )
    assert knn.eval_preprocess({"center_crop": True}, Preprocess(resolution=448)).crop_from == 512
    res = run(_multilabel_input(np.random.default_rng(9), sizes=(40, 20, 20)), preset="paper")
    assert {s.hparams["eval_view"] for s in res.summaries} == {knn.EVAL_VIEW}


def test_paper_per_k_rows_take_the_runs_bootstrap_count():
    data = _multilabel_input(np.random.default_rng(10), sizes=(40, 20, 20))
    data.n_boot = 37
    res = run(data, preset="paper", ks=[5])
    assert res.summaries[0].ci_method == "patient bootstrap, 37 resamples"
