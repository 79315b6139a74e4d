"""JPEG decoding: PIL (what radprobe's readers use) vs torchvision's decoder on the CPU and, with
``--gpu``, nvJPEG on the device (``torchvision.io.decode_jpeg(device="cuda")``, batched).

The decoded-image cache decodes each image once per geometry, so decoding bounds only the first
backbone of a study; this bench says whether decoding on the GPU would pay there, and how far its
pixels are from PIL's (IDCT implementations differ by a grey level here and there, which would change
the cache's bytes, so it is not switched on unless it is measured faster and the difference is stated).

    python bench/bench_decode.py            # CPU: PIL vs torchvision, 256 images
    python bench/bench_decode.py --gpu      # adds nvJPEG; writes results/decode_gpu.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from common import write_result


def make_jpegs(root: Path, n: int, size: int) -> list[Path]:
    """Radiograph-like 8-bit grayscale JPEGs: smooth anatomy-scale blobs plus noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    paths = []
    for i in range(n):
        img = 0.3 + 0.4 * np.exp(-((yy - rng.uniform(0.3, 0.7)) ** 2 + (xx - 0.5) ** 2) / 0.05)
        img += rng.normal(0, 0.03, img.shape)
        p = root / f"img{i:05d}.jpg"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def _rate(n: int, fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main(gpu: bool, n: int) -> dict[str, Any]:
    from torchvision.io import decode_jpeg, read_file

    workers = min(os.cpu_count() or 1, 8)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), n, 512)
        data = [read_file(str(p)) for p in paths]  # file reads are common to every path

        def pil(p: Path) -> np.ndarray:
            with Image.open(p) as im:
                return np.asarray(im)

        out: dict[str, Any] = {"images": n, "size": 512, "threads": workers}
        out["pil_imgs_per_s"] = _rate(n, lambda: [pil(p) for p in paths])
        with ThreadPoolExecutor(workers) as pool:
            out["pil_threads_imgs_per_s"] = _rate(n, lambda: list(pool.map(pil, paths)))
        out["torchvision_cpu_imgs_per_s"] = _rate(n, lambda: [decode_jpeg(d) for d in data])
        ref = [pil(p) for p in paths[:32]]
        cpu = [decode_jpeg(d)[0].numpy() for d in data[:32]]
        out["torchvision_cpu_max_diff"] = int(
            max(np.abs(a.astype(int) - b).max() for a, b in zip(ref, cpu, strict=True))
        )
        if gpu and torch.cuda.is_available():
            decode_jpeg(data[:8], device="cuda")  # warm-up: nvJPEG handles
            torch.cuda.synchronize()

            def on_gpu() -> None:
                for i in range(0, n, 64):
                    decode_jpeg(data[i : i + 64], device="cuda")
                torch.cuda.synchronize()

            out["nvjpeg_imgs_per_s"] = _rate(n, on_gpu)
            dev = [t[0].cpu().numpy() for t in decode_jpeg(data[:32], device="cuda")]
            out["nvjpeg_max_diff"] = int(
                max(np.abs(a.astype(int) - b).max() for a, b in zip(ref, dev, strict=True))
            )
            out["nvjpeg_over_pil_threads"] = out["nvjpeg_imgs_per_s"] / out["pil_threads_imgs_per_s"]
        for k, v in list(out.items()):
            if isinstance(v, float):
                out[k] = round(v, 2)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--images", type=int, default=None)
    a = ap.parse_args()
    res = main(a.gpu, a.images or (2048 if a.gpu else 256))
    print(res)
    print(write_result("decode_gpu" if a.gpu else "decode", res))
