from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

from radprobe.metrics.classification import bootstrap_metrics, classification_metrics, resample_index


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    s = rng.dirichlet(np.ones(3), 200) + np.eye(3)[y] * 0.3
    m, w = classification_metrics(y, s, "multiclass")
    assert w == []
    assert np.isclose(m["auroc_macro"], roc_auc_score(y, s / s.sum(1, keepdims=True), multi_class="ovr"))
    assert np.isclose(m["balanced_accuracy"], balanced_accuracy_score(y, s.argmax(1)))


def test_multilabel_class_without_positives_is_excluded_with_warning():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (100, 3))
    y[:, 2] = 0
    s = rng.random((100, 3))
    m, w = classification_metrics(y, s, "multilabel")
    expected = np.mean([roc_auc_score(y[:, c], s[:, c]) for c in range(2)])
    assert np.isclose(m["auroc_macro"], expected)
    assert any("class 2" in x and "no positives" in x for x in w)


def test_patient_resample_keeps_patients_whole():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    idx = resample_index(groups, np.random.default_rng(0))
    drawn = groups[idx]
    for g in np.unique(drawn):
        assert (drawn == g).sum() % (groups == g).sum() == 0
    assert len(set(drawn)) <= 3


def test_bootstrap_ci_brackets_point_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.stack([1 - (p := np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)), p], 1)
    a = bootstrap_metrics(y, s, "binary", n_boot=200, seed=3)
    b = bootstrap_metrics(y, s, "binary", n_boot=200, seed=3)
    c = bootstrap_metrics(y, s, "binary", n_boot=200, seed=4)
    auroc = next(m for m in a if m.name == "auroc")
    assert auroc.ci_low < auroc.value < auroc.ci_high
    assert [m.ci_low for m in a] == [m.ci_low for m in b]
    assert [m.ci_low for m in a] != [m.ci_low for m in c]
    assert auroc.ci_high - auroc.ci_low < 0.2


def test_patient_bootstrap_is_wider_when_patients_are_clustered():
    rng = np.random.default_rng(0)
    n_pat, per = 30, 10
    y = np.repeat(rng.integers(0, 2, n_pat), per)
    p_eff = np.repeat(rng.normal(size=n_pat), per)  # patient-level effect shared by a patient's images
    score = y * 0.5 + p_eff + rng.normal(scale=0.1, size=n_pat * per)
    s = np.stack([-score, score], 1)
    groups = np.repeat(np.arange(n_pat), per)
    wp = next(m for m in bootstrap_metrics(y, s, "binary", groups=groups, n_boot=300) if m.name == "auroc")
    wi = next(m for m in bootstrap_metrics(y, s, "binary", n_boot=300) if m.name == "auroc")
    assert (wp.ci_high - wp.ci_low) > 1.5 * (wi.ci_high - wi.ci_low)


def test_perfect_ranking_scores_auprc_exactly_one_inside_its_ci():
    # scikit-learn's AP sums recall steps x precision: nine positives ranked first give 1 + 2e-16
    y = np.r_[np.ones(9, int), np.zeros(20, int)]
    p = np.linspace(1, 0, len(y))
    assert average_precision_score(y, p) > 1.0
    s = np.stack([1 - p, p], 1)
    ap = next(m for m in bootstrap_metrics(y, s, "binary", n_boot=50) if m.name == "auprc")
    assert ap.value == 1.0 and ap.ci_low <= ap.value <= ap.ci_high
    ml, _ = classification_metrics(np.stack([y, 1 - y], 1), np.stack([p, -p], 1), "multilabel")
    assert ml["auprc_macro"] == 1.0


def test_patient_resample_has_the_properties_of_a_cluster_bootstrap():
    """Whole patients, as many draws as patients, each patient in about 1 - 1/e of the resamples,
    and the same rows as the bootstrap drawn independently from its contract."""
    from metric_reference import cluster_resample

    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 5, 60)  # 60 patients with 1-4 images each, interleaved in the data
    groups = rng.permutation(np.repeat([f"p{i:02d}" for i in range(60)], sizes))
    per_patient = {g: int((groups == g).sum()) for g in np.unique(groups)}
    seen = dict.fromkeys(per_patient, 0)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(400):
        idx = resample_index(groups, a)
        assert sorted(idx.tolist()) == sorted(cluster_resample(groups, b).tolist())
        drawn = groups[idx]
        counts = {g: int((drawn == g).sum()) for g in set(drawn)}
        assert all(n % per_patient[g] == 0 for g, n in counts.items())  # whole patients only
        assert sum(n // per_patient[g] for g, n in counts.items()) == 60  # one draw per patient
        for g in counts:
            seen[g] += 1
    share = np.array(list(seen.values())) / 400
    assert abs(share.mean() - (1 - (1 - 1 / 60) ** 60)) < 0.02  # ~0.634 of resamples hold a patient
    assert share.min() > 0.5 and share.max() < 0.77  # no patient favoured or left out


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_per_class_rows_equal_sklearn_per_class_with_their_own_bootstrap(task):
    from metric_reference import cluster_resample
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(4)
    n, c = 80, 3
    if task == "multilabel":
        y = rng.integers(0, 2, (n, c))
        y[::7, 0] = -1
    else:
        y = rng.integers(0, c, n)
    s = rng.random((n, c))
    groups = np.array([f"p{i // 2}" for i in range(n)])
    names = ("edema", "effusion", "nodule")
    got = {m.name: m for m in bootstrap_metrics(y, s, task, groups, n_boot=120, seed=5, class_names=names)}

    def ref(yy, ss):
        out = {}
        for k, name in enumerate(names):
            if task == "multilabel":
                known = yy[:, k] != -1
                yk, sk, pk = yy[known, k], ss[known, k], ss[known, k] >= 0.5
            else:
                yk, sk, pk = (yy == k).astype(int), ss[:, k], ss.argmax(1) == k
            if 0 < yk.sum() < len(yk):
                out[f"auroc:{name}"] = roc_auc_score(yk, sk)
                if task == "multilabel":
                    out[f"auprc:{name}"] = average_precision_score(yk, sk)
            out[f"f1:{name}"] = f1_score(yk, pk, zero_division=0)
        return out

    want = ref(y, s)
    assert {k for k in got if ":" in k} == set(want)
    for k, v in want.items():
        assert np.isclose(got[k].value, v, atol=1e-12), k
    draws: dict[str, list[float]] = {k: [] for k in want}
    r = np.random.default_rng(5)
    for _ in range(120):
        idx = cluster_resample(groups, r)
        for k, v in ref(y[idx], s[idx]).items():
            draws[k].append(v)
    for k in want:
        lo, hi = np.quantile(draws[k], [0.025, 0.975])
        assert np.isclose(got[k].ci_low, lo, atol=1e-12) and np.isclose(got[k].ci_high, hi, atol=1e-12), k


def test_binary_has_no_per_class_rows_and_undefined_classes_get_none():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    rows = bootstrap_metrics(y, rng.random((40, 2)), "binary", n_boot=10, class_names=("no", "yes"))
    assert all(":" not in m.name for m in rows)
    ym = rng.integers(0, 2, (40, 2))
    ym[:, 1] = 0  # no positives: no AUROC row for that label, its F1 (0) stays
    names = {
        m.name
        for m in bootstrap_metrics(ym, rng.random((40, 2)), "multilabel", n_boot=10, class_names=("a", "b"))
    }
    assert "auroc:a" in names and "auroc:b" not in names and "auprc:b" not in names and "f1:b" in names
