"""A synthetic run directory: result rows, saved predictions, an overlay and a report_meta.json.

Rows are written straight into a ResultStore (no model runs), so report tests take well under a second.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import Predictions, predictions_path

VIT, EFF = "timm:vit_small_patch14_dinov2", "timm:tf_efficientnet_lite0"
# (backbone, weights digest, quality): quality shifts every metric so the gate outcome is known.
MODELS = [(VIT, "sha-vit", 0.25), (EFF, "sha-eff", 0.2), (VIT, "random-init:seed0", 0.0)]
LABELS = {
    "sha-vit": "ViT pretrained",
    "sha-eff": "EffNet pretrained",
    "random-init:seed0": "ViT random (control)",
}


def _row(
    backbone: str, digest: str, dataset: str, protocol: str, metric: str, value: float, **kw
) -> ResultRow:
    base = {
        "eval_key": f"{backbone}|{digest}|{dataset}|{protocol}|{kw.get('hparams', {})}",
        "run_id": "r1",
        "backbone": backbone,
        "weights_digest": digest,
        "dataset": dataset,
        "manifest_digest": "m",
        "split_digest": "s",
        "protocol": protocol,
        "metric": metric,
        "value": value,
        "ci_low": value - 0.03,
        "ci_high": value + 0.03,
        "ci_method": "patient bootstrap x100, percentile 95%",
        "n": 60,
        "n_test": 60,
        "resolution": 112,
        "params": 22_000_000 if backbone == VIT else 3_400_000,
        "wall_time_s": 1.5,
        "extract_time_s": 4.0,
        "imgs_per_s": 50.0,
        "peak_mem_mb": 900.0,
        "env": {"radprobe": "0.1.0", "torch": "x", "device": "cpu"},
    }
    base.update(kw)
    return ResultRow(**base)


def make_run(run_dir: Path, meta: bool = True) -> Path:
    rng = np.random.default_rng(0)
    rows: list[ResultRow] = []
    for bb, dg, q in MODELS:
        for proto in ("knn", "linear"):
            for m, v in (("accuracy", 0.45 + q), ("balanced_accuracy", 0.44 + q), ("auroc_macro", 0.6 + q)):
                rows.append(
                    _row(
                        bb,
                        dg,
                        "mri_cls",
                        proto,
                        m,
                        v,
                        task="multiclass",
                        num_classes=3,
                        trainable_params=1155 if proto == "linear" else 0,
                        warnings=["k=200 exceeds the bank size 60; all bank samples vote"]
                        if proto == "knn"
                        else [],
                    )
                )
            for shots in (1, 2, 4):
                rows.append(
                    _row(
                        bb,
                        dg,
                        "mri_cls",
                        f"fewshot-{proto}",
                        "accuracy",
                        0.35 + q * shots / 4,
                        task="multiclass",
                        num_classes=3,
                        hparams={"shots": shots, "repeats": 3},
                        selected={"values": [0.3, 0.4, 0.5], "train_sizes": [3 * min(shots, 2)] * 3},
                        ci_method="t-interval over 3 draws",
                        warnings=[f"{shots}-shot {proto} draw 0: odd"],
                    )
                )
        # two folds, each testing a different patient, with saved predictions
        for fold in (1, 2):
            y = np.array([0, 1] * 15)
            s1 = np.clip(y * (0.2 + q * 2) + rng.normal(0.4, 0.15, len(y)), 0, 1)
            scores = np.stack([1 - s1, s1], 1)
            preds = Predictions(
                np.array([f"f{fold}_{i}" for i in range(len(y))]),
                np.array([f"pat{fold}_{i % 5}" for i in range(len(y))]),
                y,
                scores,
            )
            for proto in ("knn", "linear"):
                r = _row(
                    bb,
                    dg,
                    f"lung_cls_fold{fold}",
                    proto,
                    "auroc",
                    0.7 + q,
                    task="binary",
                    num_classes=2,
                    n=30,
                    n_test=30,
                )
                predictions_path(run_dir, r.eval_key).parent.mkdir(parents=True, exist_ok=True)
                preds.save(predictions_path(run_dir, r.eval_key))
                rows.append(r)
                rows.append(
                    _row(
                        bb,
                        dg,
                        f"lung_cls_fold{fold}",
                        proto,
                        "accuracy",
                        0.6 + q,
                        task="binary",
                        num_classes=2,
                        n=30,
                        n_test=30,
                    )
                )
        for m, v in (("dice_macro", 0.5 + q), ("iou_macro", 0.4 + q), ("hd95_macro", 20 - 30 * q)):
            rows.append(
                _row(
                    bb,
                    dg,
                    "mri_seg",
                    "seg-linear",
                    m,
                    v,
                    task="segmentation",
                    num_classes=4,
                    ci_method="patient bootstrap x100, percentile 95%",
                )
            )
    with ResultStore(run_dir) as store:
        store.write(rows)
    (run_dir / "overlays").mkdir(exist_ok=True)
    from PIL import Image

    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(
        run_dir / "overlays" / "vit__seg__a.png"
    )
    if meta:
        (run_dir / "report_meta.json").write_text(
            json.dumps(
                {
                    "title": "synthetic run",
                    "labels": LABELS,
                    "control": ["random-init:seed0"],
                    "settings": {"resolution": 112},
                    "notes": ["a note"],
                    "pool_bootstrap": 100,
                }
            )
        )
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture
def run_factory() -> Callable[..., Path]:
    """``make_run`` itself, for tests that need a variant (e.g. without report_meta.json)."""
    return make_run
