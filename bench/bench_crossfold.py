"""Feature extraction for k re-splits of one dataset (CV folds, split seeds): shared cache vs one per fold.

Each fold has other train/val/test keys, so before entries lent rows each fold ran every image
through the backbone again. The baseline reproduces that with one cache per fold; the shared cache
lets later folds borrow rows of earlier ones (same backbone, preprocessing, spec and image files).
The ratio shared / separate is the goal (about 1/k); features are checked equal.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split

BACKBONE, RESOLUTION, DATASET = "timm:vit_small_patch14_dinov2", 112, "synthetic:cls2d-multiclass"
FOLDS, BATCH = 5, 32


def _all_folds(backbone, folds, cache_for) -> tuple[float, int, dict]:
    spec = FeatureSpec(n_blocks=4)
    t0 = time.perf_counter()
    forwards, last = 0, {}
    for k, ds in enumerate(folds):
        for split in ("train", "val", "test"):
            fs, st = extract_split(backbone, ds, split, cache_for(k), spec, batch_size=BATCH)
            forwards += st.extra["forward_images"]
            last[split] = fs
    return time.perf_counter() - t0, forwards, last


def main() -> dict:
    backbone = create_backbone(BACKBONE, pretrained=False, resolution=RESOLUTION).eval()
    folds = [load_dataset(DATASET, split_seed=k) for k in range(FOLDS)]
    with tempfile.TemporaryDirectory() as tmp:
        separate = lambda k: FeatureCache(Path(tmp) / f"fold{k}")  # noqa: E731
        shared_cache = FeatureCache(Path(tmp) / "shared")
        t_sep, f_sep, ref = _all_folds(backbone, folds, separate)
        t_shared, f_shared, got = _all_folds(backbone, folds, lambda k: shared_cache)
        max_diff = max(float(np.abs(got[s].blocks - ref[s].blocks).max()) for s in ref)
    return {
        "goal": f"shared / separate extraction time about 1/{FOLDS}",
        "backbone": BACKBONE,
        "resolution": RESOLUTION,
        "dataset": DATASET,
        "images": len(folds[0].records),
        "folds": FOLDS,
        "separate_s": round(t_sep, 2),
        "shared_s": round(t_shared, 2),
        "ratio": round(t_shared / t_sep, 3),
        "forward_images_separate": f_sep,
        "forward_images_shared": f_shared,
        "max_abs_feature_diff_last_fold": max_diff,
    }


if __name__ == "__main__":
    from common import write_result

    print(write_result("crossfold", main()))
