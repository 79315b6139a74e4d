from __future__ import annotations

import numpy as np
import torch

from radprobe.metrics.classification import classification_metrics
from radprobe.protocols import linear
from radprobe.protocols.base import ProtocolInput


def test_each_grid_head_equals_the_head_trained_alone(toy):
    configs = linear.head_grid(lrs=(1e-3, 1e-2, 1e-1), n_blocks=(1, 2), avgpool=(False, True))
    kw = dict(epochs=2, min_iterations=40, batch_size=32, seed=3)
    grid = linear.predict(
        linear.train_heads(toy.train, toy.task, toy.num_classes, configs, **kw), toy.val, toy.task
    )
    for cfg in (configs[0], configs[5], configs[-1]):
        alone = linear.train_heads(toy.train, toy.task, toy.num_classes, [cfg], **kw)
        np.testing.assert_allclose(grid[cfg], linear.predict(alone, toy.val, toy.task)[cfg], atol=1e-5)
    # different learning rates really give different heads
    assert not np.allclose(grid[configs[0]], grid[configs[2]])


def test_vectorised_multilabel_bce_equals_per_sample_per_class_loop():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(5, 7, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 2, (7, 4)))
    fused = linear.head_losses(logits, y, "multilabel")
    for h in range(5):
        loop = 0.0
        for i in range(7):
            for c in range(4):
                z, t = float(logits[h, i, c]), float(y[i, c])
                loop += max(z, 0) - z * t + np.log1p(np.exp(-abs(z)))
        assert np.isclose(float(fused[h]), loop / 28, atol=1e-6)


def test_grid_selects_on_validation_and_learns(toy):
    res = linear.run(toy, lrs=(1e-4, 1e-2, 1e-1), epochs=5, min_iterations=100, batch_size=64)
    assert res.scores.shape == (len(toy.test), toy.num_classes)
    vals, _ = classification_metrics(toy.test.labels, res.scores, toy.task)
    headline = "auroc_macro" if toy.task != "binary" else "auroc"
    assert vals[headline] > 0.8
    assert res.selected["lr"] in (1e-4, 1e-2, 1e-1)
    assert res.hparams["heads"] == 3 * 2 * 2
    # the test split never influences the choice
    shuffled = ProtocolInput(
        toy.train,
        toy.val,
        toy.test.subset(np.random.default_rng(1).permutation(len(toy.test))),
        task=toy.task,
        num_classes=toy.num_classes,
    )
    res2 = linear.run(shuffled, lrs=(1e-4, 1e-2, 1e-1), epochs=5, min_iterations=100, batch_size=64)
    assert {k: v for k, v in res2.selected.items()} == res.selected


def test_same_seed_same_numbers(toy):
    a = linear.run(toy, lrs=(1e-2,), epochs=1, min_iterations=20)
    b = linear.run(toy, lrs=(1e-2,), epochs=1, min_iterations=20)
    np.testing.assert_array_equal(a.scores, b.scores)
