"""Segmentation heads: training on cached patch grids vs an online frozen forward; head costs.

(a) One head trained for the same steps twice: reading cached grids, and running the frozen backbone
    on every batch (what training without the cache does). Reported per step and for a sweep of
    ``lrs x heads`` trainings, where the cached path pays one extraction in total.
(b) seg-linear vs seg-decoder vs seg-unet: training images/s and peak memory (CUDA peak allocation,
    or the process's peak RSS, each measured in a fresh subprocess) at the same resolution and batch.

The backbone is a random-init ViT-S/14 (DINOv2-S shapes, no download); cost, not accuracy, is measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cached_vs_online(
    backbone: str = "dinov2-s",
    resolution: int = 224,
    n: int = 32,
    batch: int = 8,
    steps: int = 12,
    sweep: tuple[int, int] = (4, 2),
) -> dict:
    """Per-step time of a linear head on cached grids vs with the frozen forward in the loop."""
    from radprobe.backbones import create_backbone
    from radprobe.segmentation.heads import LinearHead
    from radprobe.segmentation.train import TrainSettings, grid_fetch, train

    device = _device()
    bb = create_backbone(backbone, pretrained=False, resolution=resolution).to(device).eval()
    layer = bb.info.num_blocks - 1
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((n, 3, resolution, resolution), dtype=np.float32))
    targets = rng.integers(0, 3, (n, resolution, resolution)).astype(np.uint8)
    rows = np.arange(n)

    t0 = time.perf_counter()
    grids = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            grids.append(bb(images[i : i + batch].to(device), grid_layers=(layer,)).grid[layer].float().cpu())
    _sync(device)
    extract_s = time.perf_counter() - t0
    feats = {layer: torch.cat(grids).numpy()}

    def online(r: np.ndarray) -> dict[int, torch.Tensor]:
        with torch.no_grad():
            return {layer: bb(images[r].to(device), grid_layers=(layer,)).grid[layer].float()}

    s = TrainSettings(
        lr=1e-3, epochs=0, min_steps=steps, batch_size=batch, weight_decay=0.0, seed=0, device=device
    )
    dim = feats[layer].shape[1]
    out = {}
    for name, fetch in (("cached", grid_fetch(feats, [layer], device)), ("online", online)):
        t0 = time.perf_counter()
        train(LinearHead(layer, dim, 3), fetch, targets, rows, s)
        _sync(device)
        out[name] = time.perf_counter() - t0
    lrs, heads = sweep
    k = lrs * heads
    return {
        "backbone": f"{backbone} (random init)",
        "resolution": resolution,
        "device": device,
        "images": n,
        "batch": batch,
        "steps": steps,
        "extract_s": round(extract_s, 3),
        "train_cached_s": round(out["cached"], 3),
        "train_online_s": round(out["online"], 3),
        "step_speedup": round(out["online"] / out["cached"], 1),
        "sweep": f"{lrs} lrs x {heads} heads",
        "sweep_cached_s": round(extract_s + k * out["cached"], 2),
        "sweep_online_s": round(k * out["online"], 2),
        "sweep_speedup": round(k * out["online"] / (extract_s + k * out["cached"]), 1),
    }


_HEAD_CHILD = """
import json, resource, sys, time
import numpy as np, torch
from radprobe.segmentation.heads import LightDecoder, LinearHead, UNetModel, decoder_plan
from radprobe.segmentation.train import TrainSettings, grid_fetch, image_fetch, train
head, res, patch, dim, depth, n, batch, steps, device = sys.argv[1:10]
res, patch, dim, depth, n, batch, steps = map(int, (res, patch, dim, depth, n, batch, steps))
rng = np.random.default_rng(0)
g = res // patch
targets = rng.integers(0, 3, (n, res, res)).astype(np.uint8)
if head == "seg-unet":
    model = UNetModel(1, 3)
    fetch = image_fetch(rng.random((n, 1, res, res), dtype=np.float32).astype(np.float16), device)
else:
    layers, scales = decoder_plan(depth, True)
    if head == "seg-linear":
        layers, scales = [depth - 1], None
    feats = {la: rng.normal(size=(n, dim, g, g)).astype(np.float16) for la in set(layers)}
    fetch = grid_fetch(feats, sorted(set(layers)), device)
    if head == "seg-linear":
        model = LinearHead(depth - 1, dim, 3)
    else:
        model = LightDecoder(layers, [dim] * 4, scales, 3)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = TrainSettings(lr=1e-3, epochs=0, min_steps=steps, batch_size=batch, weight_decay=0.0, seed=0,
                  device=device)
st = train(model, fetch, targets, np.arange(n), s)
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"imgs_per_s": st.imgs_per_s, "peak_mem_mb": st.peak_mem_mb, "params": params,
                  "rss_before_mb": base / 1024}))
"""


def head_costs(
    resolution: int = 224,
    patch: int = 14,
    dim: int = 384,
    depth: int = 12,
    n: int = 32,
    batch: int = 8,
    steps: int = 6,
) -> list[dict]:
    """Training throughput and peak memory of each head on DINOv2-S-shaped grids (or images)."""
    device = _device()
    out = []
    for head in ("seg-linear", "seg-decoder", "seg-unet"):
        args = [head, resolution, patch, dim, depth, n, batch, steps, device]
        p = subprocess.run(
            [sys.executable, "-c", _HEAD_CHILD, *map(str, args)], capture_output=True, text=True, check=True
        )
        r = json.loads(p.stdout.strip().splitlines()[-1])
        out.append(
            {
                "head": head,
                "params": r["params"],
                "train_imgs_per_s": round(r["imgs_per_s"], 1),
                "peak_mem_mb": round(r["peak_mem_mb"], 1),
                # on the CPU the RSS peak includes torch/MONAI and the inputs; the growth is the head's
                "training_growth_mb": round(
                    r["peak_mem_mb"] - (0 if device == "cuda" else r["rss_before_mb"]), 1
                ),
                "memory": "cuda max allocated" if device == "cuda" else "process peak RSS",
            }
        )
    base = out[0]["train_imgs_per_s"]
    for r in out:
        r["speed_vs_linear"] = round(r["train_imgs_per_s"] / base, 3) if base else None
    return out


def main() -> dict:
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    return {
        "cached_vs_online": cached_vs_online(),
        "heads": head_costs(),
        "note": "(b) runs at the same resolution and batch; the U-Net reads images, the heads cached grids",
    }


if __name__ == "__main__":
    from common import write_result

    print(write_result("segmentation", main()))
