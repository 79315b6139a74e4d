"""NSD against MONAI and a brute force; pooled Dice/IoU against pixel-pooled references (torchmetrics'
rules, the paper's aggregation); their rows, case tables and bootstrap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from radprobe.metrics.segmentation import CaseTable, case_scores, pooled, summarize
from radprobe.metrics.surface import surface_dice


def _blobs(shape: tuple[int, ...], seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A ground truth of ``k - 1`` ellipsoids and a prediction that shifts and grows them."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    gt, pred = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for c in range(1, k):
        centre = [rng.uniform(0.3, 0.7) * s for s in shape]
        radius = [rng.uniform(0.15, 0.3) * s for s in shape]
        shift = rng.integers(-2, 3, len(shape))
        grow = rng.uniform(0.8, 1.3)
        inside = sum(((a - ci) / r) ** 2 for a, ci, r in zip(g, centre, radius, strict=True)) <= 1
        moved = sum(
            ((a - ci - d) / (r * grow)) ** 2 for a, ci, r, d in zip(g, centre, radius, shift, strict=True)
        )
        gt[inside] = c
        pred[moved <= 1] = c
    return pred, gt


def _monai_nsd(
    pred: np.ndarray, gt: np.ndarray, k: int, tol: float, spacing: list[float] | None
) -> np.ndarray:
    from monai.metrics import compute_surface_dice

    onehot = lambda a: torch.from_numpy(np.moveaxis(np.eye(k)[a], -1, 0))[None]  # noqa: E731
    out = compute_surface_dice(
        onehot(pred), onehot(gt), [tol] * (k - 1), include_background=False, spacing=spacing
    )
    return out[0].numpy()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecation chatter in its own helper
@pytest.mark.parametrize(
    ("shape", "spacing", "tol"),
    [
        ((40, 36), None, 1.5),
        ((40, 36), (0.7, 1.9), 2.3),
        ((14, 22, 18), (2.5, 0.8, 1.1), 1.7),
        ((14, 22, 18), None, 1.0),
    ],
)
def test_nsd_matches_monai_in_2d_and_3d_with_anisotropic_spacing(shape, spacing, tol):
    for seed in range(3):
        pred, gt = _blobs(shape, seed)
        ours = surface_dice(pred, gt, 3, tol, spacing)
        ref = _monai_nsd(pred, gt, 3, tol, None if spacing is None else list(spacing))
        np.testing.assert_allclose(ours, ref, rtol=1e-6)  # MONAI returns float32
        assert np.all((ours > 0) & (ours <= 1))


def _brute_surface(mask: np.ndarray) -> list[tuple[int, ...]]:
    """Voxels of ``mask`` with a face neighbour outside it or outside the array."""
    out = []
    for v in zip(*np.nonzero(mask), strict=True):
        for ax, d in itertools.product(range(mask.ndim), (-1, 1)):
            n = list(v)
            n[ax] += d
            if not 0 <= n[ax] < mask.shape[ax] or not mask[tuple(n)]:
                out.append(tuple(int(x) for x in v))
                break
    return out


def _brute_nsd(p: np.ndarray, g: np.ndarray, tol: float, spacing: np.ndarray) -> float:
    sp, sg = np.asarray(_brute_surface(p)) * spacing, np.asarray(_brute_surface(g)) * spacing
    d = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(-1))  # every pair of surface voxels
    return ((d.min(1) <= tol).sum() + (d.min(0) <= tol).sum()) / (len(sp) + len(sg))


def test_nsd_matches_brute_force_on_tiny_masks():
    rng = np.random.default_rng(7)
    for shape, spacing in (((9, 11), np.array([1.3, 0.6])), ((5, 7, 6), np.array([3.0, 0.9, 1.2]))):
        for _ in range(4):
            gt = (rng.random(shape) < 0.4).astype(np.int64)
            pred = (rng.random(shape) < 0.4).astype(np.int64)
            tol = float(rng.uniform(0.5, 3.0))
            ours = surface_dice(pred, gt, 2, tol, spacing)[0]
            assert ours == pytest.approx(_brute_nsd(pred == 1, gt == 1, tol, spacing))


def test_nsd_empty_rules_and_tolerance_named_with_unit():
    gt = np.zeros((12, 12), np.int64)
    gt[2:6, 2:6] = 1
    pred = np.zeros_like(gt)
    pred[8:10, 8:10] = 2  # class 1 missed, class 2 absent from the ground truth
    nsd = surface_dice(pred, gt, 3, 2.0)
    assert nsd[0] == 0.0 and np.isnan(nsd[1])
    assert surface_dice(gt, gt, 3, 0.0)[0] == 1.0
    assert case_scores(pred, gt, 3).nsd_name == "nsd@2px"
    assert case_scores(pred, gt, 3, spacing=(0.5, 0.5)).nsd_name == "nsd@2mm"
    assert case_scores(pred, gt, 3, spacing=(0.5, 0.5), nsd_tolerance=1.5).nsd_name == "nsd@1.5mm"
    # a tolerance in mm reaches fewer pixels when they are larger
    pred1 = np.zeros_like(gt)
    pred1[4:8, 2:6] = 1
    assert surface_dice(pred1, gt, 2, 2.0, (1.0, 1.0))[0] > surface_dice(pred1, gt, 2, 2.0, (3.0, 3.0))[0]


def _pixel_pooled(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> dict[str, np.ndarray]:
    """The torchmetrics rules on every pixel of every case at once (no confusion matrices)."""
    p = np.concatenate([x.ravel() for x in preds])
    g = np.concatenate([x.ravel() for x in gts])
    out: dict[str, list[float]] = {"dice_pooled": [], "iou_pooled": [], "iou_pooled_paper": []}
    for c in range(1, k):
        inter = np.sum((p == c) & (g == c))
        union = np.sum((p == c) | (g == c))
        fg = g != 0  # MulticlassJaccardIndex(ignore_index=0) drops background ground-truth pixels
        union_fg = np.sum(((p == c) | (g == c)) & fg)
        total = np.sum(p == c) + np.sum(g == c)
        out["dice_pooled"].append(2 * inter / total if total else np.nan)
        out["iou_pooled"].append(inter / union if union else np.nan)
        out["iou_pooled_paper"].append(inter / union_fg if union_fg else np.nan)
    return {m: np.asarray(v) for m, v in out.items()}


def _cases(n: int, k: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n):
        size = (int(rng.integers(8, 20)), int(rng.integers(8, 20)))
        g = rng.integers(0, k, size)
        g[g == k - 1] = 0 if i % 2 else k - 1  # the last class is in half of the cases only
        p = np.where(rng.random(size) < 0.6, g, rng.integers(0, k, size))
        preds.append(p)
        gts.append(g)
    return preds, gts


def test_pooled_dice_and_iou_match_pixel_pooling_and_differ_from_per_case():
    preds, gts = _cases(9, 4, 0)
    cases = [case_scores(p, g, 4, with_hd95=False) for p, g in zip(preds, gts, strict=True)]
    cm = sum(c.confusion for c in cases)
    got, ref = pooled(cm), _pixel_pooled(preds, gts, 4)
    for m in ref:
        np.testing.assert_allclose(got[m], ref[m], rtol=1e-12)
    assert np.all(got["iou_pooled_paper"] > got["iou_pooled"])  # false positives on background ignored
    rows, _ = summarize(cases, ["bg", "a", "b", "c"], n_boot=0)
    by = {r.name: r.value for r in rows}
    assert by["dice_pooled_macro"] == pytest.approx(np.mean(ref["dice_pooled"]))
    assert by["iou_pooled_b"] == pytest.approx(ref["iou_pooled"][1])
    assert by["iou_pooled_paper_macro"] == pytest.approx(np.mean(ref["iou_pooled_paper"]))
    assert by["dice_pooled_macro"] != pytest.approx(by["dice_macro"])  # a different aggregation
    # the paper's plotted figure: the mean of its pooled Dice and its (background-dropping) Jaccard
    paper = (np.mean(ref["dice_pooled"]) + np.mean(ref["iou_pooled_paper"])) / 2
    assert by["dice_iou_mean_paper"] == pytest.approx(paper)


def test_pooled_class_never_in_ground_truth_scores_zero_when_predicted():
    gt = np.zeros((2, 8, 8), np.int64)
    gt[:, 1:4, 1:4] = 1
    pred = gt.copy()
    pred[0, 6:8, 6:8] = 2  # class 2 exists nowhere in the ground truth
    cases = [case_scores(p, g, 4, with_hd95=False) for p, g in zip(pred, gt, strict=True)]
    rows, _ = summarize(cases, ["bg", "a", "b", "c"], n_boot=0)
    by = {r.name: r.value for r in rows}
    # torchmetrics: a class with a false positive only scores 0; one with no pixel at all is left out
    assert by["dice_pooled_b"] == 0.0 and np.isnan(by["dice_pooled_c"])
    assert by["dice_pooled_macro"] == pytest.approx(0.5)
    assert np.isnan(by["dice_b"]) and by["dice_macro"] == 1.0  # per case: undefined where absent


def test_pooled_bootstrap_pools_each_resample_and_tables_round_trip(tmp_path):
    preds, gts = _cases(12, 3, 1)
    cases = [case_scores(p, g, 3) for p, g in zip(preds, gts, strict=True)]
    groups = np.asarray([f"P{i // 2}" for i in range(12)])  # two cases per patient
    classes = ["bg", "a", "b"]
    rows, _ = summarize(cases, classes, groups, n_boot=200, seed=3)
    by = {r.name: r for r in rows}
    m = by["dice_pooled_macro"]
    assert m.ci_low is not None and m.ci_low < m.value < m.ci_high
    assert "nsd@2px_macro" in by and "hd95_macro" in by
    table = CaseTable.of(cases, [f"s{i}" for i in range(12)], groups, classes)
    table.save(tmp_path / "t.npz")
    back = CaseTable.load(tmp_path / "t.npz")
    assert back.confusion is not None and back.confusion.shape == (12, 3, 3)
    assert set(by) == set(back.metric_names())
    again = {r.name: r for r in back.metrics(n_boot=200, seed=3)}
    assert again["dice_pooled_macro"].ci_low == pytest.approx(m.ci_low)
    # a resample with repeats pools its repeated cases' pixels
    idx = np.array([0, 0, 5, 7, 7, 7])
    ref = _pixel_pooled([preds[i] for i in idx], [gts[i] for i in idx], 3)
    assert back.value("iou_pooled_a", idx) == pytest.approx(ref["iou_pooled"][0])
    assert back.value("nsd@2px_b") == pytest.approx(by["nsd@2px_b"].value)
    # tables written before the pooled metrics load without them
    old = CaseTable(table.sample_ids, table.groups, table.classes, table.tables)
    old.save(tmp_path / "old.npz")
    assert not any("pooled" in n for n in CaseTable.load(tmp_path / "old.npz").metric_names())


def test_existing_rows_keep_their_values():
    """Adding NSD and pooled rows leaves the per-case rows and their CIs as they were."""
    preds, gts = _cases(10, 3, 2)
    cases = [case_scores(p, g, 3) for p, g in zip(preds, gts, strict=True)]
    groups = np.arange(10).astype(str)
    new = {r.name: r for r in summarize(cases, ["bg", "a", "b"], groups, n_boot=100, seed=1)[0]}
    for c in cases:  # as cases were before: no confusion, no NSD
        c.confusion, c.nsd = None, None
    old = summarize(cases, ["bg", "a", "b"], groups, n_boot=100, seed=1)[0]
    assert len(old) < len(new)
    for r in old:
        assert (new[r.name].value, new[r.name].ci_low, new[r.name].ci_high) == pytest.approx(
            (r.value, r.ci_low, r.ci_high), nan_ok=True
        )


def test_paired_compare_on_pooled_metrics_and_with_an_older_table(tmp_path):
    from radprobe.errors import OptionError
    from radprobe.results.compare import _compare_cases

    preds, gts = _cases(10, 3, 4)
    ids, groups, classes = [f"s{i}" for i in range(10)], np.arange(10).astype(str), ["bg", "a", "b"]
    a = CaseTable.of([case_scores(p, g, 3) for p, g in zip(preds, gts, strict=True)], ids, groups, classes)
    b = CaseTable.of([case_scores(g, g, 3) for g in gts], ids, groups, classes)  # a perfect model
    a.save(tmp_path / "a.npz")
    b.take(np.arange(10)[::-1]).save(tmp_path / "b.npz")  # another case order
    res = _compare_cases(tmp_path / "a.npz", tmp_path / "b.npz", "A", "B", "dice_pooled_macro", 100, 0)
    assert res.b == pytest.approx(1.0) and res.a == pytest.approx(a.value("dice_pooled_macro"))
    assert res.ci_high < 0
    CaseTable(b.sample_ids, b.groups, b.classes, {"dice": b.tables["dice"]}).save(tmp_path / "old.npz")
    with pytest.raises(OptionError, match="expected one of dice_macro"):
        _compare_cases(tmp_path / "a.npz", tmp_path / "old.npz", "A", "B", "dice_pooled_macro", 10, 0)
