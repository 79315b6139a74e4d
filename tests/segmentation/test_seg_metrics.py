"""Dice / IoU / HD95 against independent references, empty-class rules, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radprobe.metrics.segmentation import case_scores, dice_iou, hd95, mean_dice, metric_name, summarize


def _reference(pred: np.ndarray, gt: np.ndarray, c: int) -> tuple[float, float]:
    p, g = pred == c, gt == c
    inter = np.logical_and(p, g).sum()
    return 2 * inter / (p.sum() + g.sum()), inter / np.logical_or(p, g).sum()


def test_dice_iou_match_numpy_and_monai():
    from monai.metrics import compute_dice, compute_iou

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (3, 17, 19))
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 4, gt.shape))
    dice, iou = dice_iou(pred, gt, 4)
    for c in range(1, 4):
        d, j = _reference(pred, gt, c)
        assert dice[c - 1] == pytest.approx(d) and iou[c - 1] == pytest.approx(j)
    onehot = lambda a: torch.from_numpy(np.eye(4)[a]).permute(3, 0, 1, 2)[None]  # noqa: E731
    md = compute_dice(onehot(pred), onehot(gt), include_background=False)[0].numpy()
    mi = compute_iou(onehot(pred), onehot(gt), include_background=False)[0].numpy()
    np.testing.assert_allclose(dice, md, rtol=1e-6)
    np.testing.assert_allclose(iou, mi, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI deprecation chatter in its own helper
def test_hd95_matches_monai_and_uses_spacing():
    from monai.metrics import compute_hausdorff_distance

    gt = np.zeros((20, 30), np.int64)
    gt[4:12, 5:20] = 1
    pred = np.zeros_like(gt)
    pred[6:14, 5:24] = 1
    hd, gt_empty, pred_empty = hd95(pred, gt, 2, spacing=(2.0, 0.5))
    ref = compute_hausdorff_distance(
        torch.from_numpy(pred == 1)[None, None],
        torch.from_numpy(gt == 1)[None, None],
        include_background=True,
        percentile=95,
        spacing=[2.0, 0.5],
    )
    assert hd[0] == pytest.approx(float(ref)) and hd[0] > 0
    assert not gt_empty[0] and not pred_empty[0]
    assert hd95(pred, gt, 2)[0][0] != pytest.approx(hd[0])  # pixels vs mm differ here


def test_empty_classes_are_nan_or_worst_case_and_warned():
    gt = np.zeros((2, 16, 16), np.int64)
    gt[0, 2:8, 2:8] = 1  # case 0 has class 1 only; class 2 absent from every case
    gt[1, 3:9, 3:9] = 1
    pred0 = gt[0].copy()
    pred1 = np.zeros_like(gt[1])  # class 1 missed entirely in case 1
    pred1[10:12, 10:12] = 2  # a false positive of the absent class
    cases = [case_scores(pred0, gt[0], 3), case_scores(pred1, gt[1], 3)]
    assert np.isnan(cases[0].dice[1]) and np.isnan(cases[1].iou[1]) and np.isnan(cases[1].hd95[1])
    assert cases[1].dice[0] == 0.0
    assert cases[1].hd95[0] == pytest.approx(np.hypot(16, 16))  # the case diagonal, not NaN
    rows, warns = summarize(cases, ["background", "organ", "lesion"], n_boot=50)
    by = {r.name: r for r in rows}
    assert by["dice_organ"].value == pytest.approx(0.5)
    assert np.isnan(by["dice_lesion"].value)
    assert by["dice_macro"].value == pytest.approx(0.5)  # undefined class left out, not averaged as 0
    assert by["dice_iou_mean"].value == pytest.approx((by["dice_macro"].value + by["iou_macro"].value) / 2)
    assert any("'lesion' is absent from every" in w for w in warns)
    assert any("'organ' was not predicted" in w and "diagonal" in w for w in warns)


def test_summary_rows_names_and_patient_bootstrap():
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(30):
        gt = np.zeros((24, 24), np.int64)
        gt[4:16, 4:16] = 1
        gt[18:22, 2:6] = 2
        pred = np.where(rng.random(gt.shape) < 0.9, gt, 0)
        cases.append(case_scores(pred, gt, 3))
    groups = np.repeat(np.arange(10), 3).astype(str)
    rows, warns = summarize(cases, ["background", "left lung", "right lung"], groups, n_boot=200, seed=0)
    names = [r.name for r in rows]
    assert names[:3] == ["dice_macro", "dice_left_lung", "dice_right_lung"]
    assert {"iou_macro", "hd95_macro", "hd95_right_lung", "dice_iou_mean"} <= set(names)
    assert not warns
    for r in rows:
        assert r.ci_low <= r.value <= r.ci_high and r.n == 30
    again, _ = summarize(cases, ["background", "left lung", "right lung"], groups, n_boot=200, seed=0)
    assert [(r.ci_low, r.ci_high) for r in again] == [(r.ci_low, r.ci_high) for r in rows]
    none, _ = summarize(cases, ["background", "a", "b"], groups, n_boot=0)
    assert all(r.ci_low is None for r in none)


def test_mean_dice_and_names():
    gt = np.zeros((8, 8), np.int64)
    assert mean_dice([case_scores(gt, gt, 2, with_hd95=False)]) == float("-inf")
    assert metric_name("dice", "Left lung (L)") == "dice_Left_lung_L"
