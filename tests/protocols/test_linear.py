from __future__ import annotations

import numpy as np
import pytest
import torch

from radprobe.metrics.classification import classification_metrics
from radprobe.protocols import linear
from radprobe.protocols.base import ProtocolInput, SplitFeatures


def with_views(data: ProtocolInput, n: int, noise: float = 0.3, seed: int = 5) -> ProtocolInput:
    """``data`` whose train and val carry ``n`` augmented views: the blocks plus view-specific noise."""
    rng = np.random.default_rng(seed)

    def add(s: SplitFeatures) -> SplitFeatures:
        blocks = np.asarray(s.blocks)
        views = [(blocks + noise * rng.normal(size=blocks.shape)).astype(np.float32) for _ in range(n)]
        return SplitFeatures(s.features, s.labels, s.groups, s.blocks, s.bags, views)

    return ProtocolInput(add(data.train), add(data.val), data.test, data.task, data.num_classes, data.seed)


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


# --- preset="paper" (Baharoon et al.; docs/paper-fidelity.md) -------------------------------------


def test_paper_preset_grid_batch_epochs_and_refit_are_the_papers(blocks_input):
    p = linear.PRESETS["paper"]
    assert p["lrs"] == (1e-3, 5e-3, 1e-2, 5e-2) and p["n_blocks"] == (1, 4) and p["avgpool"] == (True, False)
    assert (p["batch_size"], p["epochs"], p["min_iterations"], p["refit"]) == (128, 10, 0, True)
    # the released code's grid order (blocks, then avgpool True before False, then lr) breaks ties
    order = [(c.n_blocks, c.avgpool, c.lr) for c in linear.head_grid(p["lrs"], p["n_blocks"], p["avgpool"])]
    assert order[:5] == [(1, True, 1e-3), (1, True, 5e-3), (1, True, 1e-2), (1, True, 5e-2), (1, False, 1e-3)]
    # 10 epochs of ceil(n / 128) steps and nothing more; a set smaller than a batch is one batch
    assert linear._plan(300, p["epochs"], p["min_iterations"], p["batch_size"]) == (128, 30)
    assert linear._plan(40, p["epochs"], p["min_iterations"], p["batch_size"]) == (40, 10)
    # DINOv2's InfiniteSampler: full batches across passes; 11 passes over >= 1,280 rows, one view each
    assert p["train_views"] == 11 and p["sampler"] == "stream"
    assert linear.passes_over(1280, 128, 10 * 10, "stream") == 10
    assert linear.passes_over(1281, 128, 10 * 11, "stream") == 11
    assert linear.passes_over(86_524, 128, 10 * 676, "stream") == 11
    assert linear.passes_over(40, 40, 10, "stream") == 10  # a set no larger than a batch
    # 200 train rows make 13 passes, 260 train + val rows 15: one view each, no reuse
    res = linear.run(with_views(blocks_input("multilabel"), 15), preset="paper", train_views=15)
    h = res.hparams
    assert h["heads"] == 16 and h["n_last_blocks"] == [1, 4] and h["batch_size"] == 128 and h["refit"]
    assert h["optimizer"].endswith("lr unscaled") and h["train_views"] == 15 and h["sampler"] == "stream"
    assert h["augmentation"].startswith("RandomResizedCrop(scale 0.75-1, ratio 3/4-4/3) + horizontal flip")
    assert res.warnings == []


def test_paper_learning_rates_are_not_scaled_by_batch_over_256(toy, monkeypatch):
    # initial weights from the seed alone, so heads of different lr start equal
    monkeypatch.setattr(linear, "_init_seed", lambda seed, cfg: seed)
    configs = linear.head_grid(lrs=(1e-2,), n_blocks=(1,), avgpool=(False,))
    kw = dict(epochs=2, min_iterations=0, batch_size=128, seed=2)
    rules = linear.TrainRules(lr_scale=False)
    unscaled = linear.train_heads(toy.train, toy.task, toy.num_classes, configs, rules=rules, **kw)
    # DINOv2's lr * batch / 256 needs twice the lr at batch 128 to train the same heads
    doubled = linear.head_grid(lrs=(2e-2,), n_blocks=(1,), avgpool=(False,))
    scaled = linear.train_heads(toy.train, toy.task, toy.num_classes, doubled, **kw)
    same = linear.train_heads(toy.train, toy.task, toy.num_classes, configs, **kw)
    a = _probe(unscaled, toy.val, toy.task)
    np.testing.assert_allclose(a, _probe(scaled, toy.val, toy.task), atol=1e-5)
    assert not np.allclose(a, _probe(same, toy.val, toy.task), atol=1e-3)


def test_paper_multilabel_loss_sums_each_samples_label_mean_over_the_batch():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(3, 6, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 2, (6, 4)))
    got = linear.head_losses(logits, y, "multilabel", multilabel_loss="sample_sum")
    for h in range(3):
        per_sample = [
            np.mean(
                [
                    max(z, 0) - z * float(y[i, c]) + np.log1p(np.exp(-abs(z)))
                    for c in range(4)
                    for z in [float(logits[h, i, c])]
                ]
            )
            for i in range(6)
        ]
        assert np.isclose(float(got[h]), np.sum(per_sample), atol=1e-5)
    # that is the batch size times the mean loss
    torch.testing.assert_close(got, 6 * linear.head_losses(logits, y, "multilabel"))


def test_paper_multilabel_loss_gradient_is_the_closed_form_one():
    rng = np.random.default_rng(3)
    z = torch.tensor(rng.normal(size=(2, 3, 4, 5, 7)), requires_grad=True)
    y = torch.tensor(rng.integers(-1, 2, (2, 1, 1, 5, 7)))
    weight = torch.ones(2, 1, 1, 7, dtype=torch.float64)
    weight[1, ..., 4:] = 0
    linear._losses(z, y, "multilabel", weight, "sample_sum").sum().backward()
    closed = linear._logit_grad(z.detach(), y, "multilabel", weight, "sample_sum")
    torch.testing.assert_close(closed, z.grad, atol=1e-7, rtol=1e-6)


def test_paper_refit_retrains_the_selected_head_on_train_plus_val(blocks_input):
    data = blocks_input("multilabel")
    refit = linear.run(data, preset="paper", train_views=0)
    alone = linear.run(data, preset="paper", refit=False, train_views=0)
    assert refit.selected == alone.selected  # the head is chosen before the refit
    assert not np.allclose(refit.scores, alone.scores, atol=1e-4)
    best = linear.HeadConfig(refit.selected["lr"], refit.selected["n_blocks"], refit.selected["avgpool"])
    rules = linear.TrainRules(lr_scale=False, multilabel_loss="sample_sum")
    heads = linear.train_heads(
        data.train.concat(data.val),
        "multilabel",
        3,
        [best],
        epochs=10,
        min_iterations=0,
        batch_size=128,
        rules=rules,
        sampler="stream",
    )
    np.testing.assert_allclose(refit.scores, linear.predict(heads, data.test, "multilabel")[best], atol=1e-6)


def test_paper_binary_heads_have_one_logit_and_multiclass_scores_are_sigmoids(blocks_input):
    from radprobe.metrics.fast import headline_scores

    binary = blocks_input("binary")
    res = linear.run(binary, preset="paper", refit=False, train_views=0)
    dims = 12 * (res.selected["n_blocks"] + res.selected["avgpool"])
    assert res.selected["trainable_params"] == dims + 1 and res.hparams["loss"] == "bce, one logit"
    np.testing.assert_allclose(res.scores.sum(1), 1.0)
    multi = blocks_input("multiclass")
    res = linear.run(multi, preset="paper", refit=False, train_views=0)
    assert res.scores.min() > 0 and not np.allclose(res.scores.sum(1), 1.0)  # sigmoid, not softmax
    # selected on the one-vs-rest macro AUROC of those scores, not on accuracy
    best = linear.HeadConfig(res.selected["lr"], res.selected["n_blocks"], res.selected["avgpool"])
    heads = linear.train_heads(
        multi.train,
        "multiclass",
        3,
        [best],
        epochs=10,
        min_iterations=0,
        batch_size=128,
        rules=linear.TrainRules(lr_scale=False),
        seed=multi.seed,
    )
    val = linear.predict(heads, multi.val, "multiclass", activation="sigmoid")[best]
    onehot = np.eye(3, dtype=int)[multi.val.labels]
    assert np.isclose(res.selected["val_score"], headline_scores(onehot, val[None], "multilabel")[0])


def test_default_linear_hparams_are_unchanged(toy):
    res = linear.run(toy, lrs=(1e-2,), epochs=1, min_iterations=5)
    assert set(res.hparams) == {
        "lrs",
        "n_last_blocks",
        "avgpool",
        "heads",
        "epochs",
        "min_iterations",
        "batch_size",
        "optimizer",
        "refit",
    }
    assert res.hparams["optimizer"] == "sgd momentum 0.9, wd 0, cosine, lr*batch/256"
    assert res.hparams["batch_size"] == 256 and res.hparams["refit"] is False


def test_paper_grid_on_pooled_features_only_is_the_papers_cnn_grid(toy):
    pooled = ProtocolInput(
        *(type(s)(s.features, s.labels, s.groups) for s in (toy.train, toy.val, toy.test)),
        task=toy.task,
        num_classes=toy.num_classes,
    )
    res = linear.run(pooled, preset="paper", epochs=1, train_views=0)
    # the released code trains CNN backbones' heads on 1 block without avgpool: 4 heads
    assert res.hparams["heads"] == 4 and res.hparams["avgpool"] == [False]
    assert res.hparams["n_last_blocks"] == [1] and res.selected["avgpool"] is False
    assert any("one vector per image" in w for w in res.warnings)


@pytest.mark.parametrize("same", [True, False])
def test_paper_grid_on_single_vector_blocks_is_the_cnn_grid_too(blocks_input, same):
    data = blocks_input("multiclass", n_blocks=1)
    if same:  # SAM, BiomedCLIP and CNN caches: one block whose (cls, patch mean) is one vector twice
        for s in (data.train, data.val, data.test):
            s.blocks = np.repeat(np.asarray(s.blocks)[:, :, :1], 2, axis=2)
    res = linear.run(data, preset="paper", epochs=1, train_views=0)
    assert res.hparams["avgpool"] == ([False] if same else [True, False])
    assert res.hparams["heads"] == (4 if same else 8)


# --- augmented views (train_views): epoch e trains on view e mod n ----------------------------------


def _reference_sgd(views, labels, cfg, seed, epochs, batch_size, classes, steps=None):
    """One head trained by autograd, step by step, as the protocol describes its SGD: cross-entropy,
    momentum 0.9, cosine schedule, lr * batch / 256. ``steps``: each step's (rows, passes); by default
    the permutation sampler's batches, epoch e's read from view e mod n."""
    n = len(labels)
    bs = min(batch_size, n)
    per_epoch = -(-n // bs)
    iterations = epochs * per_epoch
    if steps is None:
        batches, _ = linear._batches(n, bs, iterations, seed)
        steps = [(batches[it].numpy(), np.full(bs, it // per_epoch)) for it in range(iterations)]
    w = linear._initial_weights(seed, [cfg], 1, 12 * (cfg.n_blocks + cfg.avgpool), classes)[0].double()
    w.requires_grad_(True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    bufs = [torch.zeros_like(w), torch.zeros_like(b)]
    y = torch.as_tensor(labels).long()
    for it, (rows, passes) in enumerate(steps):
        picked = [torch.as_tensor(views[p % len(views)][r]) for r, p in zip(rows, passes, strict=True)]
        x = linear.linear_input(torch.stack(picked).double(), cfg.n_blocks, cfg.avgpool)
        loss = torch.nn.functional.cross_entropy(x @ w + b, y[rows])
        gw, gb = torch.autograd.grad(loss, [w, b])
        lr = cfg.lr * bs / 256 * 0.5 * (1 + np.cos(np.pi * it / iterations))
        with torch.no_grad():
            for p, g, buf in ((w, gw, bufs[0]), (b, gb, bufs[1])):
                buf.mul_(0.9).add_(g)
                p.sub_(lr * buf)
    return w.detach(), b.detach()


def test_views_train_each_epoch_on_its_own_view_as_a_step_by_step_reference(blocks_input):
    data = with_views(blocks_input("multiclass", sizes=(90, 30, 30)), 3)
    cfg = linear.HeadConfig(0.5, 4, True)
    train = data.train
    heads = linear.train_heads(
        train, "multiclass", 3, [cfg], epochs=4, min_iterations=0, batch_size=32, seed=7
    )
    _, w, b = heads.heads[cfg.variant]
    ref_w, ref_b = _reference_sgd(train.views, train.labels, cfg, 7, 4, 32, 3)
    np.testing.assert_allclose(w[0].numpy(), ref_w.numpy(), atol=2e-5)
    np.testing.assert_allclose(b[0].numpy(), ref_b.numpy(), atol=2e-5)
    # the views matter: training on the un-augmented blocks gives other weights
    plain = SplitFeatures(train.features, train.labels, train.groups, train.blocks)
    other = linear.train_heads(
        plain, "multiclass", 3, [cfg], epochs=4, min_iterations=0, batch_size=32, seed=7
    )
    assert not np.allclose(other.heads[cfg.variant][1][0].numpy(), ref_w.numpy(), atol=1e-3)


def test_views_equal_to_the_blocks_train_exactly_as_without_views(blocks_input):
    data = blocks_input("multilabel", sizes=(120, 40, 40))
    same = with_views(data, 2, noise=0.0)
    kw = dict(lrs=(1e-2, 5e-2), epochs=3, preset="paper", refit=True)
    a = linear.run(data, train_views=0, **kw)
    b = linear.run(same, train_views=2, **kw)
    assert a.selected == b.selected
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_refit_trains_on_the_views_of_train_and_val(blocks_input):
    data = with_views(blocks_input("multiclass", sizes=(80, 40, 40)), 2)
    res = linear.run(data, lrs=(1e-1,), n_blocks=(1,), avgpool=(False,), epochs=2, refit=True, train_views=2)
    best = linear.HeadConfig(1e-1, 1, False)
    both = data.train.concat(data.val)
    assert len(both.views) == 2 and len(both.views[0]) == 120
    heads = linear.train_heads(both, "multiclass", 3, [best], epochs=2, min_iterations=500, seed=0)
    np.testing.assert_allclose(res.scores, linear.predict(heads, data.test, "multiclass")[best], atol=1e-6)
    assert res.hparams["train_views"] == 2


def test_too_few_views_is_one_line(blocks_input):
    data = with_views(blocks_input("binary", sizes=(40, 20, 20)), 2)
    with pytest.raises(
        ValueError, match=r"^train_views=3: the features hold 2 augmented views of each image$"
    ):
        linear.run(data, train_views=3)


def test_stream_sampler_reads_each_rows_view_of_its_pass_as_a_step_by_step_reference(blocks_input):
    # DINOv2's InfiniteSampler: full batches cut from one stream of permutations, running on across
    # passes; a row on pass p reads view p (core.sampling.stream_order numbers entries pass * n + row)
    from radprobe.core.sampling import stream_order

    data = with_views(blocks_input("multiclass", sizes=(90, 30, 30)), 5)
    cfg, n, bs, epochs, seed = linear.HeadConfig(0.5, 4, True), 90, 32, 4, 7
    train = data.train
    heads = linear.train_heads(
        train, "multiclass", 3, [cfg], epochs=epochs, min_iterations=0, batch_size=bs, seed=seed,
        sampler="stream",
    )  # fmt: skip
    iterations = epochs * -(-n // bs)
    entries = np.concatenate([stream_order(n, bs, e, seed) for e in range(epochs)])[: iterations * bs]
    assert len(entries) == iterations * bs and entries.max() // n == 4  # 128 rows a step: 5 passes
    steps = [(e % n, e // n) for e in entries.reshape(iterations, bs)]
    w, b = _reference_sgd(train.views, train.labels, cfg, seed, epochs, bs, 3, steps)
    _, hw, hb = heads.heads[cfg.variant]
    np.testing.assert_allclose(hw[0].numpy(), w.numpy(), atol=2e-5)
    np.testing.assert_allclose(hb[0].numpy(), b.numpy(), atol=2e-5)


def test_more_passes_than_views_is_said_in_one_line(blocks_input):
    data = with_views(blocks_input("binary", sizes=(200, 40, 40)), 11)
    res = linear.run(data, preset="paper", refit=False)  # 10 epochs of 2 full batches of 128: 13 passes
    (line,) = [w for w in res.warnings if "passes" in w]
    assert line.startswith("train: 13 passes over 200 rows read 11 views") and "train_views=13" in line
