from __future__ import annotations

import numpy as np
import pytest

from radprobe.errors import OptionError
from radprobe.protocols import fewshot
from radprobe.protocols.base import ProtocolInput, SplitFeatures


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


# --- the paper's draws and preset="paper" (Baharoon et al.; docs/paper-fidelity.md) ---------------


def _patients():
    """Images of patients 1..13 (IDs as NIH's, zeros stripped) and their labels, three labels."""
    rows = [
        # (patient, labels of one image)
        ("10", [1, 0, 0]),
        ("10", [1, 1, 0]),  # carries label 0 on every image
        ("2", [1, 0, 0]),
        ("2", [0, 0, 1]),  # label 0 on one image only: never drawn for it
        ("3", [1, 0, 1]),
        ("1", [0, 1, 0]),
        ("1", [0, 1, 1]),
        ("1", [0, 1, 0]),
        ("11", [0, 0, 1]),
        ("4", [1, 1, 0]),
        ("12", [0, 1, 1]),
        ("12", [1, 1, 1]),
        ("5", [0, 0, 1]),
        ("5", [0, 0, 1]),
        ("6", [1, 0, 0]),
        ("7", [0, 1, 0]),
        ("8", [0, 0, 1]),
        ("9", [1, 0, 0]),
        ("13", [0, 1, 0]),
    ]
    groups = np.array([p for p, _ in rows])
    labels = np.array([y for _, y in rows])
    return labels, groups


def test_nih_rule_takes_the_first_n_patients_whose_every_image_carries_each_label():
    labels, groups = _patients()
    idx = fewshot.draw_nih(labels, groups, 2)
    # label 0: patients 3, 4 (2 and 10 fail: 2 lacks it on one image; 10 comes after 9 in ID order);
    # label 1: 1, 4; label 2: 3, 5
    assert set(groups[idx]) == {"1", "3", "4", "5"}
    # every image of a chosen patient is in, each once, in row order
    assert idx.tolist() == sorted(np.flatnonzero(np.isin(groups, ["1", "3", "4", "5"])).tolist())
    # IDs are compared as numbers: 10 comes after 9 (numeric), not after 1 (string order)
    assert "10" in set(groups[fewshot.draw_nih(labels, groups, 5)])
    assert "10" not in set(groups[fewshot.draw_nih(labels, groups, 4)])


def test_nih_rule_names_the_label_it_cannot_serve_and_how_many_patients_it_has():
    labels, groups = _patients()
    with pytest.raises(OptionError, match=r"fewshot.shots=8: .* label 0; it has 5$") as err:
        fewshot.draw_nih(labels, groups, 8)
    assert "\n" not in str(err.value)
    # label 0 -> patient 3, label 1 -> 1, label 2 -> 3
    assert set(groups[fewshot.draw_nih(labels, groups, 1)]) == {"1", "3"}
    unknown = labels.copy()
    unknown[groups == "3", 0] = -1  # an unknown label is not carried: label 0 now takes patient 4
    assert set(groups[fewshot.draw_nih(unknown, groups, 1)]) == {"1", "3", "4"}
    with pytest.raises(OptionError, match="label 0; it has 4"):
        fewshot.draw_nih(unknown, groups, 5)


@pytest.mark.parametrize(("size", "n"), [(10, 4), (1344, 1), (1344, 16), (77, 8), (100, 100), (138, 3)])
def test_evenly_spaced_rule_is_the_papers_rounded_arange(size, n):
    got = fewshot.draw_evenly_spaced(size, n)
    assert got.tolist() == np.arange(0, size, size / n).round().astype(int).tolist()
    assert len(got) == n == len(set(got.tolist()))


def test_evenly_spaced_rounds_halves_to_even_and_refuses_more_images_than_the_pool():
    assert fewshot.draw_evenly_spaced(10, 4).tolist() == [0, 2, 5, 8]
    with pytest.raises(OptionError, match="needs 12 images; the pool has 10"):
        fewshot.draw_evenly_spaced(10, 12)


def _nih_like_input(seed=0):
    rng = np.random.default_rng(seed)
    labels, groups = _patients()
    train_y = np.concatenate([labels] * 3)
    train_g = np.concatenate([groups, np.char.add(groups, "0"), np.char.add(groups, "00")])
    centers = rng.normal(scale=2.0, size=(3, 6))

    def split(y, g):
        f = y @ centers + rng.normal(size=(len(y), 6))
        # two augmented views: the features moved by view noise, as (N, 1 block, (cls, mean), D)
        views = [np.stack([f, f], 1)[:, None] + 0.1 * rng.normal(size=(len(y), 1, 2, 6)) for _ in range(2)]
        return SplitFeatures(f, y, g, views=[v.astype(np.float32) for v in views])

    val_y = (rng.random((40, 3)) < 0.4).astype(int)
    test_y = (rng.random((40, 3)) < 0.4).astype(int)
    val_y[:2], test_y[:2] = [[1, 1, 1], [0, 0, 0]], [[1, 1, 1], [0, 0, 0]]
    return ProtocolInput(
        split(train_y, train_g),
        split(val_y, np.arange(40).astype(str)),
        split(test_y, np.arange(40).astype(str)),
        task="multilabel",
        num_classes=3,
    )


def test_paper_preset_is_one_rule_draw_of_paper_linear_heads():
    data = _nih_like_input()
    # the paper's draws train on augmented views, as its linear probe does (here 2 views, not 10)
    res = fewshot.run(data, shots=(1, 2), preset="paper", rule="nih", inner={"linear": {"train_views": 2}})
    assert [s.protocol for s in res.summaries] == ["fewshot-linear", "fewshot-linear"]
    for s, n in zip(res.summaries, (1, 2), strict=True):
        h = s.hparams
        assert (h["shots"], h["repeats"], h["preset"], h["rule"]) == (n, 1, "paper", "nih")
        assert h["refit"] is False and h["train_views"] == 2
        (draw,) = s.selected["per_draw"]
        assert draw["lr"] in (1e-3, 5e-3, 1e-2, 5e-2)  # the linear paper grid
        expected = fewshot.draw_nih(data.train.labels, data.train.groups, n)
        assert s.selected["train_sizes"] == [len(expected)]
        assert s.ci_low is None  # one draw


def test_paper_preset_pool_train_plus_val_draws_from_both():
    data = _nih_like_input()
    inner = {"linear": {"train_views": 2}}
    res = fewshot.run(data, shots=(30,), preset="paper", rule="evenly_spaced", pool="train+val", inner=inner)
    (s,) = res.summaries
    assert s.selected["train_sizes"] == [30] and s.hparams["pool"] == "train+val"
    assert any("selection on val is optimistic" in w for w in s.warnings)
    both = data.train.concat(data.val)
    idx = fewshot.draw_evenly_spaced(len(both), 30)
    assert idx.max() >= len(data.train)  # the draw reaches into val


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"preset": "paper"}, "needs fewshot.rule: nih"),
        ({"preset": "paper", "rule": "nih", "protocols": ("knn", "linear")}, "linear only"),
        ({"rule": "nih", "repeats": 3}, "one deterministic draw"),
        ({"rule": "patients"}, "expected one of nih, evenly_spaced"),
        ({"pool": "val"}, r"expected train or train\+val"),
    ],
)
def test_paper_options_refuse_what_they_cannot_serve_in_one_line(options, words):
    with pytest.raises(OptionError, match=words) as err:
        fewshot.run(_nih_like_input(), shots=(1,), **options)
    assert "\n" not in str(err.value)


def test_paper_draws_read_the_linear_presets_views_and_the_draws_own_rows():
    assert fewshot.train_views({"preset": "paper", "rule": "nih"}) == 11
    assert fewshot.train_views({"preset": "paper", "inner": {"linear": {"train_views": 0}}}) == 0
    assert fewshot.train_views({}) == 0 and fewshot.train_views({"protocols": ["knn"]}) == 0
    data = _nih_like_input()
    idx = fewshot.draw_nih(data.train.labels, data.train.groups, 2)
    sub = data.train.subset(idx)
    for view, whole in zip(sub.views, data.train.views, strict=True):
        np.testing.assert_array_equal(view, whole[idx])
    with pytest.raises(ValueError, match="train_views=11: the features hold 2 augmented views"):
        fewshot.run(data, shots=(1,), preset="paper", rule="nih")


@pytest.mark.parametrize("toy", ["binary", "multiclass"], indirect=True)
def test_nih_rule_needs_a_multilabel_task(toy):
    with pytest.raises(OptionError, match=f"this is a {toy.task} task"):
        fewshot.run(toy, shots=(1,), preset="paper", rule="nih")


def test_default_fewshot_hparams_are_unchanged(toy):
    res = fewshot.run(toy, shots=(1,), repeats=2, protocols=("knn",))
    assert res.hparams == {"shots": [1], "repeats": 2, "protocols": ["knn"]}
    assert res.summaries[0].hparams == {"shots": 1, "repeats": 2}


def test_t_intervals_are_clipped_to_the_metric_range_and_say_so():
    from types import SimpleNamespace

    from radprobe.protocols import fewshot

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    perfect = np.stack([1 - y, y], 1).astype(float)  # AUROC 1
    coin = rng.random((40, 2))  # AUROC about 0.5
    data = SimpleNamespace(task="binary", test=SimpleNamespace(labels=y))
    picked = [(r, np.arange(4), SimpleNamespace(scores=s, selected={}, warnings=[])) for r, s in
              enumerate([perfect, coin, perfect])]  # fmt: skip
    st = SimpleNamespace(pool="train", repeats=3, inner={}, extra=lambda: {})
    row = fewshot._summary(data, "knn", 1, picked, st)
    assert row.ci_high == 1.0 and 0.0 <= row.ci_low < row.value < 1.0
    assert row.ci_method == "t-interval over 3 draws, clipped to [0, 1]"


def test_every_draw_and_the_summary_equal_an_independent_recomputation(toy):
    """Each draw's value is the inner protocol trained on that draw alone and scored by scikit-learn;
    the row is their mean with scipy's t-interval (clipped to [0, 1])."""
    from scipy import stats
    from sklearn.metrics import accuracy_score, roc_auc_score

    from radprobe.protocols import logreg

    res = fewshot.run(toy, shots=(2,), repeats=4, protocols=("logreg",), inner={"logreg": {"cs": (0.5,)}})
    (row,) = res.summaries
    values = []
    for r in range(4):
        idx = fewshot.draw(
            toy.train.labels, toy.train.groups, 2, toy.task, np.random.default_rng([toy.seed, 2, r])
        )
        sub = ProtocolInput(
            toy.train.subset(idx), toy.val, toy.test, toy.task, toy.num_classes, seed=toy.seed + r
        )
        scores = logreg.run(sub, cs=(0.5,)).scores
        y = toy.test.labels
        if toy.task == "multiclass":
            values.append(accuracy_score(y, scores.argmax(1)))
        elif toy.task == "binary":
            values.append(roc_auc_score(y, scores[:, 1]))
        else:
            values.append(np.mean([roc_auc_score(y[:, c], scores[:, c]) for c in range(y.shape[1])]))
    np.testing.assert_allclose(row.selected["values"], values, atol=1e-12)
    sem = stats.sem(values)
    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(values), scale=sem) if sem > 0 else (values[0], values[0])
    assert np.isclose(row.value, np.mean(values))
    assert np.isclose(row.ci_low, max(lo, 0.0)) and np.isclose(row.ci_high, min(hi, 1.0))
