"""Training-data throughput of the trained protocols: per-item CPU augmentation against batched
augmentation on the training device, measured side by side in one run, no model.

A folder of generated 512-px grayscale PNGs is decoded once into the decoded-image cache at each
resolution (112 and 224 px: a resize, so float32 entries, as real radiographs at their own sizes
give). Each epoch of the train split then runs through :func:`train_loader` with the default affine
:class:`Augment` (crop, rotation, jitter) two ways:

- ``per_item``: today's path, each image augmented and normalised on the CPU in the loader
  (``augment_on=cpu``), then moved to the device;
- ``batched``: the loader yields stored rows and :meth:`ImageSet.device_batch` augments and
  normalises each batch on the device in one resampling (``augment_on=device``).

img/s counts images ready on the device per second of wall time (the median of ``epochs`` epochs,
loader start included); ``ratio`` = batched / per_item at the same resolution and workers.
``--gpu`` runs the CUDA version (pinned batches, more workers for the per-item path).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.features.image_source import decoded_split
from radprobe.features.images import ImageCache
from radprobe.finetune.data import Augment, ImageSet, train_loader


def _epoch(images: ImageSet, bs: int, epoch: int, workers: int, device: torch.device) -> tuple[float, int]:
    """Seconds for one epoch of augmented, normalised batches on ``device``, and its images."""
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    loader = train_loader(images, bs, epoch, 0, workers, pin_memory=images.batched and cuda)
    n = 0
    for batch in loader:
        if images.batched:
            x = images.device_batch(batch, device)[0]
        else:
            x = batch[0].to(device, non_blocking=True)
        n += len(x)
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, n


def run_case(
    spec: str, root: Path, res: int, bs: int, workers: int, epochs: int, device: torch.device
) -> dict[str, Any]:
    """One resolution and worker count: both paths over the same decoded entry."""
    ds = load_dataset(spec)
    pre = create_backbone("test:vit-tiny", pretrained=False, resolution=res).preprocess
    t0 = time.perf_counter()
    entry = decoded_split(ImageCache(root / "images"), ds, "train", pre, workers)
    decode_s = time.perf_counter() - t0
    assert entry is not None
    images = ImageSet(ds, ds.split("train"), pre, Augment(), seed=0, decoded=entry)
    out: dict[str, Any] = {
        "resolution": res,
        "images": len(images),
        "batch": bs,
        "workers": workers,
        "storage": images.storage,
        "entry_build_s": round(decode_s, 2),
    }
    for path, batched in (("per_item", False), ("batched", True)):
        images.batched = batched
        _epoch(images, bs, 0, workers, device)  # warm-up: page cache, kernels, allocator
        times = [_epoch(images, bs, e + 1, workers, device) for e in range(epochs)]
        out[f"{path}_img_s"] = round(statistics.median(n / s for s, n in times), 1)
    out["ratio"] = round(out["batched_img_s"] / out["per_item_img_s"], 2)
    print(out, flush=True)
    return out


def main(
    n: int = 384,
    resolutions: tuple[int, ...] = (112, 224),
    workers: tuple[int, ...] = (0, 1),
    epochs: int = 3,
    device: str = "cpu",
    bs: int = 64,
    threads: int | None = 1,
) -> dict[str, Any]:
    from bench_extraction import make_pngs

    if threads is not None:
        torch.set_num_threads(threads)

    root = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    spec = make_pngs(root / "pngs", n, 512)
    made = time.perf_counter() - t0
    dev = torch.device(device)
    cases = [run_case(spec, root, r, bs, w, epochs, dev) for r in resolutions for w in workers]
    return {
        "note": NOTE if device == "cpu" else NOTE_GPU,
        "png_generation_s": round(made, 1),
        "source_px": 512,
        "torch_threads": torch.get_num_threads(),
        "augment": "Augment() defaults: crop_scale 0.85, rotate 10, intensity 0.1",
        "cases": cases,
    }


NOTE = (
    "2-core CPU shared with other work (load average 1.1-2.3 around the run); torch on 1 thread "
    "(2 threads spin against the other load); no model: loader + augmentation + normalisation only. "
    "On a CPU 'device' the batched path does the same arithmetic in the main process, larger than "
    "the caches at 224 px, and gives up the workers' parallelism: its gain here is small; the path "
    "is built for a GPU"
)
NOTE_GPU = "CUDA: batched = stored rows pinned, copied non-blocking, augmented on the GPU; no model"

if __name__ == "__main__":
    from common import write_result

    if "--gpu" in sys.argv:
        print(
            write_result(
                "train_data_gpu", main(n=768, workers=(0, 8), epochs=2, device="cuda", bs=128, threads=None)
            )
        )
    elif "--quick" in sys.argv:  # a smoke run; writes nothing
        print(main(n=64, resolutions=(112,), workers=(0,), epochs=1))
    else:
        print(write_result("train_data", main()))
