"""Extract features once per (backbone, dataset split, feature spec) and serve them from the cache.

For 3D datasets the default entry holds one row per volume (slice features averaged, for
classification). ``per_slice=True`` keeps one row per slice instead (segmentation needs every slice's
patch grid): sample ids become ``<volume id>#<k>``, and the arrays ``volume`` (row -> position of the
volume in the split) and ``slice`` (row -> slice index along the dataset's axis) map rows back;
:func:`volume_rows` gives each volume's contiguous row range. 2D datasets ignore ``per_slice``.
Volume classification reads per-slice entries and pools them with :func:`pool_volumes` (mean or max),
so one extraction serves every pooling.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from radprobe.features.cache import FeatureCache, FeatureSet, FeatureSpec, cache_key
from radprobe.utils import digest

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone, Preprocess
    from radprobe.data import Dataset
    from radprobe.data.records import Record


class _Images(TorchDataset):
    """Decoded, preprocessed images of one split; volumes come out as (D, 3, R, R) slice stacks."""

    def __init__(self, dataset: Dataset, records: list[Record], preprocess: Preprocess) -> None:
        self.dataset = dataset
        self.records = records
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.dataset.load_image(self.records[i])
        if self.dataset.ndim == 3:
            return torch.stack([self.preprocess(s) for s in img])
        return self.preprocess(img)


@dataclass
class ExtractStats:
    """Compute accounting of one extraction (or of a cache hit, where nothing ran)."""

    cache_hit: bool
    n_images: int = 0
    wall_time_s: float = 0.0
    imgs_per_s: float = 0.0
    peak_mem_mb: float = 0.0
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _autocast(device: torch.device) -> torch.autocast | torch.inference_mode:
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def _per_slice(dataset: Dataset, per_slice: bool) -> bool:
    return per_slice and dataset.ndim == 3


def feature_key(
    backbone: Backbone, dataset: Dataset, split: str, spec: FeatureSpec, *, per_slice: bool = False
) -> str:
    """Cache key of one split's features (per-slice entries of volumes get their own key)."""
    info = backbone.info
    return cache_key(
        backbone={
            "name": info.name,
            "arch": info.arch,
            "weights": info.weights_digest,
            # how the module was built (e.g. the position-table grid) changes its features too
            "layout": digest({k: list(v.shape) for k, v in backbone.state_dict().items()}),
        },
        preprocess=backbone.preprocess.to_dict(),
        manifest_digest=dataset.manifest_digest(),
        # the split label carries the layout so averaged and per-slice entries never collide,
        # while every existing (averaged / 2D) key stays what it was
        split=f"{split}#slices" if _per_slice(dataset, per_slice) else split,
        split_digest=dataset.split_digest(split),
        spec=spec,
    )


def extract_split(
    backbone: Backbone,
    dataset: Dataset,
    split: str,
    cache: FeatureCache,
    spec: FeatureSpec | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    per_slice: bool = False,
) -> tuple[FeatureSet, ExtractStats]:
    """Features of one split: from the cache when present, else one batched forward pass.

    ``progress`` is called with the number of images (volumes) finished after every batch.
    ``per_slice`` keeps one row per slice of 3D volumes (see the module docstring).
    """
    spec = spec or FeatureSpec()
    device = torch.device(device)
    per_slice = _per_slice(dataset, per_slice)
    key = feature_key(backbone, dataset, split, spec, per_slice=per_slice)
    hit = cache.get(key)
    if hit is not None:
        return hit, ExtractStats(cache_hit=True, n_images=len(hit), device=str(device))
    with cache.lock(key):
        hit = cache.get(key)  # another process may have finished it while we waited
        if hit is not None:
            return hit, ExtractStats(cache_hit=True, n_images=len(hit), device=str(device))
        return _extract(
            backbone, dataset, split, cache, key, spec, batch_size, num_workers, device, progress, per_slice
        )


def volume_depths(dataset: Dataset, records: list[Record]) -> list[int]:
    """Slices of each volume along its axis, from the headers where the format allows."""
    from radprobe.data.readers import volume_depth
    from radprobe.errors import DataError

    out = []
    for r in records:
        try:
            out.append(volume_depth(r.image))
        except DataError:
            out.append(int(dataset.load_image(r).shape[0]))  # formats without a cheap header read
    return out


def volume_rows(fs: FeatureSet) -> list[slice]:
    """Row range of each volume of a per-slice entry, in split order."""
    vol = np.asarray(fs.arrays["volume"])
    if len(vol) and np.any(np.diff(vol) < 0):
        raise ValueError(f"cache entry {fs.path}: volume rows are not contiguous")
    n = int(vol[-1]) + 1 if len(vol) else 0
    ends = np.searchsorted(vol, np.arange(n), side="right")
    starts = np.concatenate([[0], ends[:-1]]).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


VOLUME_POOLS = ("mean", "max")


def volume_offsets(fs: FeatureSet) -> np.ndarray:
    """(n_volumes + 1,) row offsets of a per-slice entry: volume i holds rows offsets[i]:offsets[i + 1]."""
    rows = volume_rows(fs)
    if any(r.stop <= r.start for r in rows):
        raise ValueError(f"cache entry {fs.path}: a volume has no slice rows")
    return np.asarray([0, *(r.stop for r in rows)], dtype=np.int64)


def pool_volumes(
    fs: FeatureSet, how: str = "mean", arrays: tuple[str, ...] = ("cls", "blocks")
) -> dict[str, np.ndarray]:
    """One float32 row per volume from a per-slice entry: the mean or the max over its slices.

    Volumes are pooled one at a time, so memory stays at one volume's slices whatever the entry size.
    """
    if how not in VOLUME_POOLS:
        raise ValueError(f"volume pooling must be one of {', '.join(VOLUME_POOLS)}, got {how!r}")
    offsets = volume_offsets(fs)
    out: dict[str, np.ndarray] = {}
    for name in arrays:
        if name not in fs.arrays:
            continue
        a = fs.arrays[name]
        res = np.empty((len(offsets) - 1, *a.shape[1:]), dtype=np.float32)
        for v in range(len(res)):
            x = a[offsets[v] : offsets[v + 1]]
            res[v] = x.mean(0, dtype=np.float64) if how == "mean" else x.max(0)
        out[name] = res
    return out


def _extract(
    backbone: Backbone,
    dataset: Dataset,
    split: str,
    cache: FeatureCache,
    key: str,
    spec: FeatureSpec,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: Callable[[int], None] | None,
    per_slice: bool = False,
) -> tuple[FeatureSet, ExtractStats]:
    records = dataset.split(split)
    if not records:
        raise ValueError(f"split {split!r} of {dataset.name} is empty")
    volumes = dataset.ndim == 3
    depths = volume_depths(dataset, records) if per_slice else []
    loader = DataLoader(
        _Images(dataset, records, backbone.preprocess),
        batch_size=1 if volumes else batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    backbone = backbone.to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    writer = cache.writer(key)
    n = sum(depths) if per_slice else len(records)
    out: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    n_forward = 0
    try:
        row = 0
        with torch.inference_mode(), _autocast(device):
            for v, batch in enumerate(loader):
                if per_slice:
                    if batch.shape[1] != depths[v]:
                        raise ValueError(
                            f"{records[v].image.path}: read {batch.shape[1]} slices, header says {depths[v]}"
                        )
                    if not out:
                        out["volume"] = writer.allocate("volume", (n,), "int32")
                        out["slice"] = writer.allocate("slice", (n,), "int32")
                    for i in range(0, depths[v], batch_size):
                        feats = _forward(backbone, batch[0, i : i + batch_size].to(device), spec)
                        b = next(iter(feats.values())).shape[0]
                        for name, t in feats.items():
                            if name not in out:
                                out[name] = writer.allocate(name, (n, *t.shape[1:]), spec.dtype)
                            out[name][row : row + b] = t.float().cpu().numpy()
                        out["volume"][row : row + b] = v
                        out["slice"][row : row + b] = np.arange(i, i + b)
                        row += b
                    n_forward += depths[v]
                    if progress is not None:
                        progress(1)
                    continue
                if volumes:
                    feats = _forward_volume(backbone, batch[0], spec, batch_size, device)
                    n_forward += batch.shape[1]
                else:
                    feats = _forward(backbone, batch.to(device, non_blocking=True), spec)
                    n_forward += batch.shape[0]
                if not out:
                    for name, t in feats.items():
                        out[name] = writer.allocate(name, (n, *t.shape[1:]), spec.dtype)
                b = next(iter(feats.values())).shape[0]
                for name, t in feats.items():
                    out[name][row : row + b] = t.float().cpu().numpy()
                row += b
                if progress is not None:
                    progress(b)
        elapsed = time.perf_counter() - start
        stats = ExtractStats(
            cache_hit=False,
            n_images=n,
            wall_time_s=elapsed,
            imgs_per_s=n_forward / elapsed if elapsed > 0 else 0.0,
            peak_mem_mb=peak_memory_mb(device),
            device=str(device),
            extra={"forward_images": n_forward},
        )
        out.clear()
        ids = (
            [f"{r.sample_id}#{k}" for r, d in zip(records, depths, strict=True) for k in range(d)]
            if per_slice
            else [r.sample_id for r in records]
        )
        fs = writer.commit(
            ids,
            {
                "backbone": backbone.info.to_dict(),
                "preprocess": backbone.preprocess.to_dict(),
                "dataset": dataset.name,
                "split": split,
                "spec": spec.to_dict(),
                "stats": stats.__dict__,
                **({"per_slice": True, "volumes": [r.sample_id for r in records]} if per_slice else {}),
            },
        )
    except BaseException:
        out.clear()
        writer.abort()
        raise
    return fs, stats


def _forward(backbone: Backbone, x: torch.Tensor, spec: FeatureSpec) -> dict[str, torch.Tensor]:
    o = backbone(x, n_blocks=spec.n_blocks, grid_layers=spec.grid_layers)
    feats = {"cls": o.cls, "pooled": o.pooled, "blocks": o.blocks}
    for layer, g in o.grid.items():
        feats[f"grid_{layer}"] = g
    return feats


def _forward_volume(
    backbone: Backbone, slices: torch.Tensor, spec: FeatureSpec, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """One volume's features: every slice through the 2D backbone, then the mean over slices."""
    parts: list[dict[str, torch.Tensor]] = []
    for i in range(0, slices.shape[0], batch_size):
        parts.append(_forward(backbone, slices[i : i + batch_size].to(device), spec))
    return {k: torch.cat([p[k].float() for p in parts]).mean(0, keepdim=True) for k in parts[0]}
