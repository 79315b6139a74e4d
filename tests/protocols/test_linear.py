from __future__ import annotations

import numpy as np
import pytest
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


def _probe(heads, split, task):
    return np.stack(list(linear.predict(heads, split, task).values()))


def test_row_space_training_equals_full_space_training(toy):
    # 40 samples < 24..36 input dims? make the inputs wide so the projection really applies
    small = toy.train.subset(np.arange(20))
    configs = linear.head_grid(lrs=(1e-2, 1e-1), n_blocks=(1, 2), avgpool=(False, True))
    kw = dict(epochs=3, min_iterations=60, batch_size=8, seed=1)
    full = linear.train_heads(small, toy.task, toy.num_classes, configs, project=False, **kw)
    proj = linear.train_heads(small, toy.task, toy.num_classes, configs, project=True, **kw)
    np.testing.assert_allclose(_probe(proj, toy.val, toy.task), _probe(full, toy.val, toy.task), atol=2e-5)
    # and the heads really moved away from their initial weights
    init = linear.train_heads(
        small, toy.task, toy.num_classes, configs, project=False, min_iterations=1, epochs=0
    )
    assert np.abs(_probe(full, toy.val, toy.task) - _probe(init, toy.val, toy.task)).max() > 0.05


@pytest.mark.parametrize("batch_size", [32, 256])  # mini-batches; full batches (few-shot draws)
def test_training_sets_fused_in_one_pass_equal_each_trained_alone(toy, batch_size):
    rng = np.random.default_rng(4)
    trains = [
        toy.train.subset(np.sort(rng.choice(len(toy.train), n, replace=False))) for n in (9, 30, 30, 70)
    ]
    configs = linear.head_grid(lrs=(1e-3, 1e-1), n_blocks=(1, 2), avgpool=(False, True))
    kw = dict(epochs=2, min_iterations=50, batch_size=batch_size)
    fused = linear.train_many(trains, toy.task, toy.num_classes, configs, [5, 6, 7, 8], **kw)
    for train, seed, heads in zip(trains, (5, 6, 7, 8), fused, strict=True):
        alone = linear.train_heads(train, toy.task, toy.num_classes, configs, seed=seed, **kw)
        np.testing.assert_allclose(
            _probe(heads, toy.val, toy.task), _probe(alone, toy.val, toy.task), atol=2e-5
        )
    # different draws give different heads
    assert not np.allclose(_probe(fused[1], toy.val, toy.task), _probe(fused[2], toy.val, toy.task))


def test_unknown_multilabel_entries_are_left_out_of_the_loss():
    rng = np.random.default_rng(2)
    logits = torch.tensor(rng.normal(size=(3, 6, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(-1, 2, (6, 4)))
    fused = linear.head_losses(logits, y, "multilabel")
    for h in range(3):
        terms = [
            max(z, 0) - z * t + np.log1p(np.exp(-abs(z)))
            for i in range(6)
            for c in range(4)
            if (t := float(y[i, c])) >= 0
            for z in [float(logits[h, i, c])]
        ]
        assert np.isclose(float(fused[h]), np.mean(terms), atol=1e-6)


@pytest.mark.parametrize("toy", ["multilabel"], indirect=True)  # unknown labels exist in multi-label only
def test_a_label_unknown_everywhere_never_moves_its_weights(toy):
    y = toy.train.labels.copy()
    y[:, 1] = -1
    train = type(toy.train)(toy.train.features, y, toy.train.groups, toy.train.blocks)
    configs = linear.head_grid(lrs=(1e-1,), n_blocks=(1,), avgpool=(False,))
    kw = dict(epochs=2, min_iterations=30, batch_size=16, seed=0)
    trained = linear.train_heads(train, "multilabel", 3, configs, **kw)
    init = linear.train_heads(train, "multilabel", 3, configs, epochs=0, min_iterations=1, seed=0)
    (_, w, b), (_, w0, _) = trained.heads[(1, False)], init.heads[(1, False)]
    assert float(b[0, 1]) == 0.0 and torch.equal(w[0, :, 1], w0[0, :, 1])
    assert float(b[0, 0].abs()) > 0  # the known labels did train


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_closed_form_logit_gradient_equals_autograd_of_the_loss(task):
    rng = np.random.default_rng(6)
    r, v, h, c, b = 2, 3, 4, 5, 7
    z = torch.tensor(rng.normal(size=(r, v, h, c, b)), requires_grad=True)
    if task == "multilabel":
        y = torch.tensor(rng.integers(-1, 2, (r, 1, 1, c, b)))
    else:
        y = torch.tensor(rng.integers(0, c, (r, 1, 1, b)))
    weight = torch.ones(r, 1, 1, b, dtype=torch.float64)
    weight[1, ..., 5:] = 0  # padded batch slots of the second set
    linear._losses(z, y, task, weight).sum().backward()
    closed = linear._logit_grad(z.detach(), y, task, weight)
    torch.testing.assert_close(closed, z.grad, atol=1e-7, rtol=1e-6)  # float32 targets


def test_sets_too_large_to_stack_train_one_by_one_with_the_same_result(toy, monkeypatch):
    configs = linear.head_grid(lrs=(1e-2, 1e-1), n_blocks=(1, 2), avgpool=(False, True))
    kw = dict(epochs=2, min_iterations=40, batch_size=32)
    trains = [toy.train, toy.train.subset(np.arange(100))]
    held = linear.train_many(trains, toy.task, toy.num_classes, configs, [1, 2], **kw)
    monkeypatch.setattr(linear, "PRECOMPUTE_BYTES", 0)  # every set now counts as too large to stack
    streamed = linear.train_many(trains, toy.task, toy.num_classes, configs, [1, 2], **kw)
    for a, b in zip(held, streamed, strict=True):
        np.testing.assert_allclose(_probe(b, toy.val, toy.task), _probe(a, toy.val, toy.task), atol=2e-5)
