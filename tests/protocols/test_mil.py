"""Attention-MIL over slice features: learns a one-slice signal, seeded, selects on validation only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from radprobe.errors import RadprobeError
from radprobe.protocols import mil
from radprobe.protocols.base import Bags, ProtocolInput, SplitFeatures

FAST = {"lrs": (1e-3, 3e-3), "epochs": 0, "min_steps": 300, "hidden": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the evaluation runs small fits
    yield
    torch.set_num_threads(before)


def _volumes(rng: np.random.Generator, n: int, task: str = "binary", d: int = 8) -> SplitFeatures:
    """Volumes of 12-20 noise slices; a positive volume has one slice shifted along its class's axis."""
    if task == "multilabel":
        y = (rng.random((n, 2)) < 0.5).astype(np.int64)
    else:
        y = rng.integers(0, 3 if task == "multiclass" else 2, n)
    bags = []
    for i in range(n):
        x = rng.normal(size=(int(rng.integers(12, 21)), d)).astype(np.float32)
        axes = np.flatnonzero(y[i]) if task == "multilabel" else ([y[i] - 1] if y[i] > 0 else [])
        for a in axes:  # each finding on its own single slice
            x[rng.integers(len(x)), a] += 5.0
        bags.append(x)
    b = Bags.from_list(bags)
    return SplitFeatures(np.stack([x.mean(0) for x in bags]), y, np.arange(n).astype(str), bags=b)


def _data(seed: int = 0, task: str = "binary", n: tuple[int, int, int] = (60, 30, 60)) -> ProtocolInput:
    rng = np.random.default_rng(seed)
    splits = [_volumes(rng, k, task) for k in n]
    return ProtocolInput(*splits, task=task, num_classes={"binary": 2, "multiclass": 3}.get(task, 2))


def test_mil_finds_a_single_slice_signal_that_mean_pooling_dilutes():
    data = _data()
    res = mil.run(data, **FAST)
    auroc = roc_auc_score(data.test.labels, res.scores[:, 1])
    mean_pooled = LogisticRegression(max_iter=1000).fit(data.train.features, data.train.labels)
    baseline = roc_auc_score(data.test.labels, mean_pooled.predict_proba(data.test.features)[:, 1])
    assert auroc > 0.85
    assert auroc > baseline
    assert res.scores.shape == (len(data.test), 2)
    np.testing.assert_allclose(res.scores.sum(1), 1.0)
    # the attention head's size: V and U (D x L + L each) and w (L); the classifier adds D x C + C
    d, hidden = 8, FAST["hidden"]
    assert res.selected["attention_params"] == 2 * (d * hidden + hidden) + hidden
    assert res.selected["trainable_params"] == res.selected["attention_params"] + d * 2 + 2
    assert res.selected["lr"] in FAST["lrs"]


def test_same_seed_same_scores_and_global_rng_untouched():
    data = _data(1, n=(30, 16, 16))
    kw = {**FAST, "min_steps": 60}
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = mil.run(data, **kw)
    after = torch.rand(1)
    b = mil.run(data, **kw)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.selected == b.selected
    assert before == after  # training drew from its own seeded generator
    other = mil.run(ProtocolInput(data.train, data.val, data.test, data.task, 2, seed=1), **kw)
    assert not np.array_equal(other.scores, a.scores)


def test_selection_reads_validation_never_test():
    data = _data(2, n=(30, 16, 16))
    kw = {**FAST, "min_steps": 60}
    res = mil.run(data, **kw)
    rng = np.random.default_rng(0)
    shuffled = SplitFeatures(
        data.test.features, rng.permutation(data.test.labels), data.test.groups, bags=data.test.bags
    )
    res2 = mil.run(ProtocolInput(data.train, data.val, shuffled, data.task, 2), **kw)
    assert res.selected == res2.selected
    np.testing.assert_array_equal(res.scores, res2.scores)
    # changing the validation labels changes what is selected
    flipped = SplitFeatures(data.val.features, 1 - data.val.labels, data.val.groups, bags=data.val.bags)
    res3 = mil.run(ProtocolInput(data.train, flipped, data.test, data.task, 2), **kw)
    assert res3.selected["val_scores"] != res.selected["val_scores"]


def test_multiclass_and_multilabel_with_unknown_labels():
    mc = _data(3, "multiclass", n=(60, 30, 60))
    res = mil.run(mc, **FAST)
    assert res.scores.shape == (60, 3)
    assert (res.scores.argmax(1) == mc.test.labels).mean() > 0.6  # chance is 1/3

    ml = _data(4, "multilabel", n=(60, 30, 60))
    known = ml.train.labels.copy()
    known[np.random.default_rng(0).random(known.shape) < 0.2] = -1
    train = SplitFeatures(ml.train.features, known, ml.train.groups, bags=ml.train.bags)
    # two findings on different slices: one attention branch per label, found with more steps
    res = mil.run(
        ProtocolInput(train, ml.val, ml.test, "multilabel", 2), **{**FAST, "lrs": (3e-3,), "min_steps": 600}
    )
    assert res.scores.shape == (60, 2)
    assert all(roc_auc_score(ml.test.labels[:, j], res.scores[:, j]) > 0.8 for j in range(2))


def test_unknown_training_labels_add_no_loss():
    y = torch.tensor([[1, -1], [0, 1]])
    logits = torch.tensor([[2.0, 9.0], [-1.0, 0.5]])
    # the -1 entry's logit (9.0) must not matter: mean BCE over the three known entries
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])
    )
    assert mil._loss(logits, y, "multilabel").item() == pytest.approx(ref.item())


def test_2d_features_are_refused_with_one_line():
    data = _data(5, n=(10, 6, 6))
    flat = [SplitFeatures(s.features, s.labels, s.groups) for s in (data.train, data.val, data.test)]
    with pytest.raises(RadprobeError, match="needs a 3D dataset") as e:
        mil.run(ProtocolInput(*flat, task="binary", num_classes=2))
    assert "\n" not in str(e.value)


def test_bags_subset_and_concat_keep_each_volumes_slices():
    rng = np.random.default_rng(6)
    parts = [rng.normal(size=(k, 3)) for k in (2, 5, 1, 4)]
    bags = Bags.from_list(parts)
    sub = bags.subset(np.array([3, 0]))
    np.testing.assert_array_equal(sub[0], parts[3])
    np.testing.assert_array_equal(sub[1], parts[0])
    both = sub.concat(bags.subset(np.array([2])))
    assert list(both.sizes) == [4, 2, 1]
    assert len(bags.subset(np.array([], dtype=int))) == 0
    with pytest.raises(ValueError):
        Bags(np.zeros((3, 2)), np.array([0, 2, 2, 3]))  # an empty volume
