"""Extraction throughput against bare backbone forward on the same batches (goal: ratio >= 0.9).

The bare baseline runs the model on batches already decoded, preprocessed and held in memory; the
extraction path decodes files, preprocesses, runs the model and writes the memory-mapped cache. The
ratio says how much the data pipeline costs on top of the model itself.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.cache import FeatureCache, FeatureSpec
from radprobe.features.extract import extract_split

CASES = [
    # (backbone, resolution, dataset, batch size)
    ("test:vit-tiny", None, "synthetic:cls2d-multiclass", 64),
    ("timm:vit_small_patch14_dinov2", 112, "synthetic:cls2d-multiclass", 32),
]


def _bare(backbone, batches, n_blocks: int) -> float:
    with torch.inference_mode():
        backbone(batches[0], n_blocks=n_blocks)  # warm-up
        t0 = time.perf_counter()
        n = 0
        for b in batches:
            backbone(b, n_blocks=n_blocks)
            n += len(b)
    return n / (time.perf_counter() - t0)


def run_case(name: str, resolution: int | None, spec: str, bs: int, workers: int, repeats: int = 3) -> dict:
    """Bare forward and full extraction, interleaved ``repeats`` times; the best of each counts
    (the least disturbed by other load on the machine)."""
    backbone = create_backbone(name, pretrained=False, resolution=resolution).eval()
    ds = load_dataset(spec)
    records = ds.split("train")
    images = torch.stack([backbone.preprocess(ds.load_image(r)) for r in records])
    batches = list(images.split(bs))
    fs_spec = FeatureSpec(n_blocks=min(4, backbone.info.num_blocks))
    bare, extraction = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up run (imports, allocator)
        extract_split(backbone, ds, "train", FeatureCache(Path(tmp) / "warm"), fs_spec, batch_size=bs)
        for r in range(repeats):
            bare.append(_bare(backbone, batches, fs_spec.n_blocks))
            cache = FeatureCache(Path(tmp) / f"run{r}")
            t0 = time.perf_counter()
            extract_split(backbone, ds, "train", cache, fs_spec, batch_size=bs, num_workers=workers)
            extraction.append(len(records) / (time.perf_counter() - t0))
        _, hit = extract_split(backbone, ds, "train", cache, fs_spec, batch_size=bs)
    return {
        "backbone": name,
        "resolution": backbone.preprocess.resolution,
        "dataset": spec,
        "images": len(records),
        "batch_size": bs,
        "num_workers": workers,
        "bare_forward_img_s": round(max(bare), 1),
        "extraction_img_s": round(max(extraction), 1),
        "ratio": round(max(extraction) / max(bare), 3),
        "all_bare_img_s": [round(x, 1) for x in bare],
        "all_extraction_img_s": [round(x, 1) for x in extraction],
        "second_call_cache_hit": hit.cache_hit,
    }


def main() -> dict:
    rows = [run_case(*c, workers=w) for c in CASES for w in (0, 1)]
    return {"goal": "extraction / bare forward >= 0.9", "cases": rows}


if __name__ == "__main__":
    from common import write_result

    print(write_result("extraction", main()))
