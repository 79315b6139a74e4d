from __future__ import annotations

import numpy as np

from radprobe.protocols import fewshot


def test_draw_has_exactly_n_per_class_from_distinct_patients():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    groups = np.array([f"p{i // 3}" for i in range(300)])
    for n in (1, 4, 8):
        idx = fewshot.draw(labels, groups, n, "multiclass", np.random.default_rng(n))
        assert np.bincount(labels[idx], minlength=3).tolist() == [n, n, n]
        for c in range(3):
            g = groups[idx][labels[idx] == c]
            assert len(set(g)) == len(g)
    a = fewshot.draw(labels, groups, 4, "multiclass", np.random.default_rng(1))
    b = fewshot.draw(labels, groups, 4, "multiclass", np.random.default_rng(2))
    assert not np.array_equal(a, b)


def test_multilabel_draw_reaches_n_positives_per_label():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 4)) < 0.3).astype(int)
    groups = np.arange(400).astype(str)
    idx = fewshot.draw(labels, groups, 4, "multilabel", rng)
    assert (labels[idx].sum(0) >= 4).all()


def test_run_reports_mean_sd_and_every_draw(toy):
    res = fewshot.run(
        toy, shots=(1, 4), repeats=3, protocols=("knn", "logreg"), inner={"logreg": {"cs": (0.1, 1.0)}}
    )
    assert res.scores is None
    rows = {(s.hparams["shots"], s.protocol): s for s in res.summaries}
    assert set(rows) == {(1, "fewshot-knn"), (4, "fewshot-knn"), (1, "fewshot-logreg"), (4, "fewshot-logreg")}
    s = rows[(4, "fewshot-logreg")]
    assert len(s.selected["values"]) == 3
    assert np.isclose(s.value, np.mean(s.selected["values"]))
    assert s.ci_low <= s.value <= s.ci_high
