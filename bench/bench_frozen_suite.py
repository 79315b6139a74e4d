"""The whole frozen suite on cached features vs one extraction pass of the same data (goal <= 0.25).

Extraction: a ViT-S/14 (DINOv2 architecture, random init: speed does not depend on the weights) at
224 px over every split of the dataset, into a fresh cache. Suite: kNN (all k), the 52-head linear
grid, the 45-value logreg C sweep and few-shot (5 shot counts x 5 draws x kNN, linear, logreg), all
reading the cached features.
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
from radprobe.protocols import fewshot, knn, linear, logreg
from radprobe.protocols.base import ProtocolInput, SplitFeatures

DATASET = "synthetic:cls2d-multiclass"


def main(dataset: str = DATASET) -> dict:
    ds = load_dataset(dataset)
    backbone = create_backbone("timm:vit_small_patch14_dinov2", pretrained=False, resolution=224)
    spec = FeatureSpec(n_blocks=4)
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp))
        t0 = time.perf_counter()
        feats = {
            s: extract_split(backbone, ds, s, cache, spec, batch_size=32)[0] for s in ("train", "val", "test")
        }
        t_extract = time.perf_counter() - t0
        splits = {
            s: SplitFeatures(
                np.asarray(f.cls), ds.labels(ds.split(s)), ds.patients(ds.split(s)), np.asarray(f.blocks)
            )
            for s, f in feats.items()
        }
    data = ProtocolInput(splits["train"], splits["val"], splits["test"], ds.task, len(ds.classes), seed=0)
    from radprobe.core.runtime import threads_for  # the thread policy `radprobe eval` applies

    timings = {}
    for name, fn in (
        ("knn", lambda: knn.run(data)),
        ("linear_52_heads", lambda: linear.run(data)),
        ("logreg_45_C", lambda: logreg.run(data)),
        ("fewshot_5x5", lambda: fewshot.run(data, shots=(1, 2, 4, 8, 16), repeats=5)),
    ):
        t0 = time.perf_counter()
        with threads_for(splits["train"].features.size):
            fn()
        timings[name] = round(time.perf_counter() - t0, 3)
    suite = sum(timings.values())
    n = sum(len(ds.split(s)) for s in ("train", "val", "test"))
    return {
        "dataset": dataset,
        "images": n,
        "extraction": {"backbone": "vit_small_patch14_dinov2 @224", "seconds": round(t_extract, 3)},
        "suite_seconds": timings,
        "suite_total_s": round(suite, 3),
        "ratio_suite_over_extraction": round(suite / t_extract, 3),
        "goal": "<= 0.25",
    }


if __name__ == "__main__":
    from common import write_result

    print(write_result("frozen_suite", main()))
