from __future__ import annotations

import numpy as np

from radprobe.metrics.paired import paired_bootstrap


def _scores(y, noise, rng):
    s = y + rng.normal(scale=noise, size=len(y))
    return np.stack([-s, s], 1)


def test_identical_models_differ_by_zero_with_p_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = _scores(y, 1.0, rng)
    r = paired_bootstrap(y, s, s.copy(), "binary", "auroc", n_boot=200)
    assert r.diff == 0 and r.ci_low == 0 and r.ci_high == 0 and r.p_value == 1.0


def test_better_model_is_significant_and_ci_excludes_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good, bad = _scores(y, 0.5, rng), _scores(y, 3.0, rng)
    r = paired_bootstrap(y, good, bad, "binary", "auroc", groups=np.arange(300) // 3, n_boot=300)
    assert r.diff > 0 and r.ci_low > 0 and r.p_value < 0.01
    flipped = paired_bootstrap(y, bad, good, "binary", "auroc", groups=np.arange(300) // 3, n_boot=300)
    assert np.isclose(flipped.diff, -r.diff) and flipped.ci_high < 0


def test_paired_interval_is_narrower_than_unpaired_for_correlated_models():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    shared = rng.normal(scale=1.0, size=200)
    a = y + shared + rng.normal(scale=0.2, size=200)
    b = y + shared + rng.normal(scale=0.25, size=200)
    sa, sb = np.stack([-a, a], 1), np.stack([-b, b], 1)
    r = paired_bootstrap(y, sa, sb, "binary", "auroc", n_boot=300)
    # an unpaired difference CI (independent resamples) is much wider
    from radprobe.metrics.classification import bootstrap_metrics

    ca = next(m for m in bootstrap_metrics(y, sa, "binary", n_boot=300, seed=1) if m.name == "auroc")
    cb = next(m for m in bootstrap_metrics(y, sb, "binary", n_boot=300, seed=2) if m.name == "auroc")
    unpaired_width = np.hypot(ca.ci_high - ca.ci_low, cb.ci_high - cb.ci_low)
    assert (r.ci_high - r.ci_low) < 0.5 * unpaired_width


def test_paired_ci_equals_the_per_resample_sklearn_loop():
    from metric_reference import cluster_resample, sklearn_metrics

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    sa, sb = rng.random((90, 3)), rng.random((90, 3))
    groups = np.arange(90) // 3
    r = paired_bootstrap(y, sa, sb, "multiclass", "auroc_macro", groups=groups, n_boot=150, seed=4)
    ref_rng, diffs = np.random.default_rng(4), []
    for _ in range(150):
        idx = cluster_resample(groups, ref_rng)
        da = sklearn_metrics(y[idx], sa[idx], "multiclass")["auroc_macro"]
        db = sklearn_metrics(y[idx], sb[idx], "multiclass")["auroc_macro"]
        diffs.append(da - db)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert np.isclose(r.ci_low, lo, atol=1e-12) and np.isclose(r.ci_high, hi, atol=1e-12)
