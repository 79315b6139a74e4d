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


def _bare(backbone, batches, n_blocks: int, device: torch.device) -> float:
    from radprobe.features.extract import _autocast

    with torch.inference_mode(), _autocast(device):
        backbone(batches[0], n_blocks=n_blocks)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        n = 0
        for b in batches:
            backbone(b, n_blocks=n_blocks)
            n += len(b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def run_case(
    name: str,
    resolution: int | None,
    spec: str,
    bs: int,
    workers: int,
    repeats: int = 3,
    device: str = "cpu",
) -> dict:
    """Bare forward and full extraction, interleaved ``repeats`` times; the best of each counts
    (the least disturbed by other load on the machine). On CUDA the bare batches wait on the device
    and both run under the extraction's bf16 autocast."""
    dev = torch.device(device)
    backbone = create_backbone(name, pretrained=False, resolution=resolution).eval().to(dev)
    ds = load_dataset(spec)
    records = ds.split("train")
    images = torch.stack([backbone.preprocess(ds.load_image(r)) for r in records]).to(dev)
    batches = list(images.split(bs))
    fs_spec = FeatureSpec(n_blocks=min(4, backbone.info.num_blocks))
    bare, extraction = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up run (imports, allocator)
        extract_split(
            backbone, ds, "train", FeatureCache(Path(tmp) / "warm"), fs_spec, batch_size=bs, device=dev
        )
        for r in range(repeats):
            bare.append(_bare(backbone, batches, fs_spec.n_blocks, dev))
            cache = FeatureCache(Path(tmp) / f"run{r}")
            t0 = time.perf_counter()
            extract_split(
                backbone, ds, "train", cache, fs_spec, batch_size=bs, num_workers=workers, device=dev
            )
            extraction.append(len(records) / (time.perf_counter() - t0))
        _, hit = extract_split(backbone, ds, "train", cache, fs_spec, batch_size=bs, device=dev)
    return {
        "backbone": name,
        "resolution": backbone.preprocess.resolution,
        "dataset": spec,
        "images": len(records),
        "batch_size": bs,
        "num_workers": workers,
        "device": device,
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


def main_gpu(images: int = 12288) -> dict:
    """ViT-S/14 and ViT-B/14 at 224 px on a CUDA device over ``images`` generated 224-px PNGs:
    where the GPU outruns one decoding process, and what DataLoader workers buy back.

    A pass must last well beyond worker start-up (about a second): with 2048 images (1433 in the
    train split) a pass took ~1.2 s and 0, 4 or 12 workers all read 0.9-1.4k img/s."""
    import tempfile

    import numpy as np
    from PIL import Image

    root = Path(tempfile.mkdtemp()) / "pngs"
    rng = np.random.default_rng(0)
    for i in range(images):
        cls = f"c{i % 2}"
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8)).save(root / cls / f"p{i:05d}_0.png")
    spec = f"folder:{root}"
    rows = [
        run_case(name, 224, spec, 256, w, repeats=2, device="cuda")
        for name in ("timm:vit_small_patch14_dinov2", "timm:vit_base_patch14_dinov2")
        for w in (0, 8)
    ]
    return {"goal": "extraction / bare forward on a GPU, by DataLoader workers", "cases": rows}


if __name__ == "__main__":
    import sys

    from common import write_result

    if "--gpu" in sys.argv:
        print(write_result("extraction_gpu", main_gpu()))
    else:
        print(write_result("extraction", main()))
