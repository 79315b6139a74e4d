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

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radprobe.core.runtime import peak_memory_mb
from radprobe.features.cache import FORMAT_VERSION, FeatureCache, FeatureSet, FeatureSpec, cache_key
from radprobe.features.image_source import CachedSource, DecodeSource
from radprobe.features.images import ImageCache, default_workers
from radprobe.utils import digest

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone, Preprocess
    from radprobe.data import Dataset
    from radprobe.data.records import Record
    from radprobe.features.cache import EntryWriter
    from radprobe.features.views import AugmentView


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


def forward_rate(stats: list[dict[str, Any]]) -> float:
    """Images through the backbone per second over the extractions that ran any (rows lent by
    other cache entries took no forward pass, so they count neither as images nor as time)."""
    ran = [
        (m.get("extra", {}).get("forward_images", m.get("n_images", 0)), m.get("wall_time_s", 0.0))
        for m in stats
    ]
    ran = [(n, t) for n, t in ran if n > 0]
    total = sum(t for _, t in ran)
    return float(sum(n for n, _ in ran) / total) if total > 0 else 0.0


def extraction_paths(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the extractions that ran spent their time: waiting for decoded data (``decode_s``) or
    not (``forward_s``), and which data paths served them (``decode``, ``image-cache-build``,
    ``image-cache-hit``; entries written before the decoded-image cache count as ``decode``)."""
    ran = [m.get("extra", {}) for m in stats if m.get("extra", {}).get("forward_images", 0) > 0]
    return {
        "decode_s": round(sum(float(e.get("decode_s", 0.0)) for e in ran), 4),
        "forward_s": round(sum(float(e.get("forward_s", 0.0)) for e in ran), 4),
        "data_paths": sorted({str(e.get("data_path", "decode")) for e in ran}),
    }


def _autocast_dtype(device: torch.device, backbone: Backbone | None = None) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    if backbone is not None and backbone.info.extra.get("autocast") == "fp16":
        return torch.float16  # the backbone's own precision (the paper: entries, as released)
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def extraction_autocast(
    device: torch.device, backbone: Backbone | None = None
) -> torch.autocast | torch.inference_mode:
    dtype = _autocast_dtype(device, backbone)
    if dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def compute_precision(device: str | torch.device, backbone: Backbone | None = None) -> str:
    """How extraction computes on ``device``: "fp32", or "bf16-autocast" / "fp16-autocast" on CUDA
    (fp16 where the ``backbone`` asks for it, as the ``paper:`` entries do)."""
    dtype = _autocast_dtype(torch.device(device), backbone)
    return {torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast"}.get(dtype, "fp32")


def _per_slice(dataset: Dataset, per_slice: bool) -> bool:
    return per_slice and dataset.ndim == 3


def _backbone_identity(backbone: Backbone, precision: str = "fp32") -> dict[str, Any]:
    info = backbone.info
    out = {
        "name": info.name,
        "arch": info.arch,
        "weights": info.weights_digest,
        # how the module was built (e.g. the position-table grid) changes its features too
        "layout": digest({k: list(v.shape) for k, v in backbone.state_dict().items()}),
    }
    # reduced-precision features differ from fp32 ones; fp32 keys stay what they always were
    if precision != "fp32":
        out["precision"] = precision
    return out


def feature_key(
    backbone: Backbone,
    dataset: Dataset,
    split: str,
    spec: FeatureSpec,
    *,
    per_slice: bool = False,
    precision: str = "fp32",
) -> str:
    """Cache key of one split's features (per-slice entries of volumes get their own key).

    ``precision`` (:func:`compute_precision`) keeps bf16 features from CUDA apart from fp32 ones.
    """
    return cache_key(
        backbone=_backbone_identity(backbone, precision),
        preprocess=backbone.preprocess.to_dict(),
        manifest_digest=dataset.manifest_digest(),
        # the split label carries the layout so averaged and per-slice entries never collide,
        # while every existing (averaged / 2D) key stays what it was
        split=f"{split}#slices" if _per_slice(dataset, per_slice) else split,
        split_digest=dataset.split_digest(split),
        spec=spec,
    )


def feature_family(backbone: Backbone, spec: FeatureSpec, *, per_slice: bool, precision: str = "fp32") -> str:
    """What makes rows of two entries interchangeable: backbone, preprocessing, spec and row layout.

    Entries of one family (other folds, split seeds or label files over the same images) lend each
    other rows, matched by :func:`image_identity`, so an image is run through a backbone once.
    """
    return digest(
        {
            "v": FORMAT_VERSION,
            "backbone": _backbone_identity(backbone, precision),
            "preprocess": backbone.preprocess.to_dict(),
            "spec": spec.to_dict(),
            "per_slice": per_slice,
        },
        length=32,
    )


def image_identity(dataset: Dataset, record: Record) -> str | None:
    """Digest of what decides a record's pixels, or None when its file cannot be looked at.

    The file enters by resolved path, size and modification time (each file of a folder, for DICOM
    series), with the reference's slice/array fields and the dataset's read options; labels, splits
    and sample ids do not enter, so the same image under another manifest has the same identity.
    """
    ref = record.image
    path = Path(ref.path)
    if not path.is_absolute() and dataset.root:
        path = Path(dataset.root) / path
    try:
        if path.is_dir():
            stamp: Any = []
            for f in sorted(path.iterdir()):
                if f.is_file():
                    st = f.stat()
                    stamp.append((f.name, st.st_size, st.st_mtime_ns))
        else:
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns]
        where = str(path.resolve())
    except OSError:
        return None
    return digest(
        {
            "path": where,
            "stamp": stamp,
            "ref": [ref.kind, ref.index, ref.axis, ref.key],
            "read": dataset.read.to_dict(),
            "ndim": dataset.ndim,
        },
        length=32,
    )


def extract_split(
    backbone: Backbone,
    dataset: Dataset,
    split: str,
    cache: FeatureCache,
    spec: FeatureSpec | None = None,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    per_slice: bool = False,
    images: ImageCache | None = None,
) -> tuple[FeatureSet, ExtractStats]:
    """Features of one split: from the cache when present, else one batched forward pass.

    ``progress`` is called with the number of images (volumes) finished after every batch.
    ``per_slice`` keeps one row per slice of 3D volumes (see the module docstring).
    ``num_workers``: decoding processes; None: what suits the machine (:func:`.images.default_workers`).
    ``images``: the decoded-image cache (:mod:`.images`) the split is read from, or decoded into on
    the way; None decodes every image on the CPU for this backbone alone (the features are the same).
    """
    spec = spec or FeatureSpec()
    device = torch.device(device)
    num_workers = default_workers(device) if num_workers is None else num_workers
    per_slice = _per_slice(dataset, per_slice)
    precision = compute_precision(device, backbone)
    key = feature_key(backbone, dataset, split, spec, per_slice=per_slice, precision=precision)
    hit = cache.get(key)
    if hit is not None:
        return hit, ExtractStats(cache_hit=True, n_images=len(hit), device=str(device))
    with cache.lock(key):
        hit = cache.get(key)  # another process may have finished it while we waited
        if hit is not None:
            return hit, ExtractStats(cache_hit=True, n_images=len(hit), device=str(device))
        return _extract(
            backbone,
            dataset,
            split,
            cache,
            key,
            spec,
            batch_size,
            num_workers,
            device,
            progress,
            per_slice,
            precision,
            images,
        )


def volume_depths(dataset: Dataset, records: list[Record]) -> list[int]:
    """Slices of each volume along its axis, from the headers where the format allows."""
    from radprobe.data.readers import volume_depth
    from radprobe.errors import DataError

    out = []
    for r in records:
        try:
            out.append(volume_depth(r.image, dataset.read.orient))
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


ROW_KEYS = "row_keys"  # per-row image identity (fixed-width bytes; empty when unknown)
ROW_KEY_DTYPE = "S48"  # a 32-character digest, "#" and a slice index
_COPY_ROWS = 256  # rows copied from a lending entry at a time, so grids never load whole


def _row_identities(dataset: Dataset, records: list[Record], counts: list[int], per_slice: bool) -> list[str]:
    out = []
    for r, c in zip(records, counts, strict=True):
        ident = image_identity(dataset, r) or ""
        out += [f"{ident}#{k}" if ident and per_slice else ident for k in range(c)]
    return out


def _borrow(
    cache: FeatureCache, family: str, key: str, wanted: list[str]
) -> dict[int, tuple[FeatureSet, int]]:
    """Rows other entries of ``family`` already hold: target row -> (lending entry, its row)."""
    need: dict[bytes, list[int]] = {}
    for row, ident in enumerate(wanted):
        if ident:
            need.setdefault(ident.encode(), []).append(row)
    found: dict[int, tuple[FeatureSet, int]] = {}
    if not need:
        return found
    # candidates open with a size check only; an entry that lends is checked in full first
    for fs in cache.family(family, exclude=key, verify="size"):
        idents = fs.arrays.get(ROW_KEYS)
        if idents is None:
            continue
        hits = [(j, ident) for j, ident in enumerate(idents.tolist()) if ident in need]
        if not hits or (full := cache.get(fs.key)) is None:
            continue
        for j, ident in hits:
            for row in need.pop(ident, ()):
                found[row] = (full, j)
        if not need:
            break
    return found


def _copy_lent(lent: dict[int, tuple[FeatureSet, int]], out: dict[str, np.ndarray], names: list[str]) -> None:
    by_entry: dict[str, list[tuple[int, int]]] = {}
    entries: dict[str, FeatureSet] = {}
    for row, (fs, j) in lent.items():
        by_entry.setdefault(fs.key, []).append((j, row))
        entries[fs.key] = fs
    for k, pairs in by_entry.items():
        pairs.sort()  # read the lending entry in file order
        src = np.asarray([j for j, _ in pairs])
        dst = np.asarray([r for _, r in pairs])
        for name in names:
            a = entries[k].arrays[name]
            for i in range(0, len(src), _COPY_ROWS):
                out[name][dst[i : i + _COPY_ROWS]] = a[src[i : i + _COPY_ROWS]]


@dataclass
class _Rows:
    """Where a split's rows come from: each record's row range, the rows other entries lend, and the
    records that run through the backbone."""

    records: list[Record]
    per_slice: bool
    depths: list[int]  # slices of each volume (per-slice entries only)
    starts: np.ndarray  # (records + 1,) row offsets: record i holds rows starts[i]:starts[i + 1]
    identities: list[str]  # per-row image identity ("" when unknown)
    lent: dict[int, tuple[FeatureSet, int]]  # row -> (lending entry, its row)
    todo: list[int]  # records to run through the backbone, in split order

    @property
    def n(self) -> int:
        return int(self.starts[-1])


class _Output:
    """The arrays of the entry being written, allocated in ``writer`` as their shapes become known."""

    def __init__(self, writer: EntryWriter, n: int, dtype: str) -> None:
        self.writer = writer
        self.n = n
        self.dtype = dtype
        self.arrays: dict[str, np.ndarray] = {}

    def allocate(self, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        self.arrays[name] = self.writer.allocate(name, shape, dtype)
        return self.arrays[name]

    def put(self, name: str, rows: np.ndarray | slice, t: torch.Tensor) -> None:
        """Write features ``t`` to ``rows`` of array ``name`` (allocated on its first rows)."""
        if name not in self.arrays:
            self.allocate(name, (self.n, *t.shape[1:]), self.dtype)
        self.arrays[name][rows] = t.float().cpu().numpy()


def _plan_rows(
    dataset: Dataset,
    records: list[Record],
    per_slice: bool,
    cache: FeatureCache,
    family: str,
    key: str,
    lend: bool = True,
) -> _Rows:
    """Lay out the split's rows and find which of them entries of ``family`` can lend (none when
    ``lend`` is False: rows with no identity are neither borrowed nor lent)."""
    depths = volume_depths(dataset, records) if per_slice else []
    counts = depths if per_slice else [1] * len(records)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    identities = _row_identities(dataset, records, counts, per_slice) if lend else [""] * int(starts[-1])
    lent = _borrow(cache, family, key, identities)
    # a record is taken over only when every one of its rows is on loan
    todo = [i for i in range(len(records)) if any(r not in lent for r in range(starts[i], starts[i + 1]))]
    for i in todo:
        for r in range(starts[i], starts[i + 1]):
            lent.pop(r, None)
    return _Rows(records, per_slice, depths, starts, identities, lent, todo)


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
    per_slice: bool,
    precision: str,
    images: ImageCache | None = None,
) -> tuple[FeatureSet, ExtractStats]:
    """Build the entry ``key``: rows other entries lend are copied, the rest run through the backbone."""
    records = dataset.split(split)
    if not records:
        raise ValueError(f"split {split!r} of {dataset.name} is empty")
    volumes = dataset.ndim == 3
    if volumes and spec.view is not None:
        raise ValueError("augmented views are drawn on 2D images; this dataset holds volumes")
    family = feature_family(backbone, spec, per_slice=per_slice, precision=precision)
    # a view's crop is drawn per sample id, which another manifest may give the same image under
    lend = spec.view is None
    rows = _plan_rows(dataset, records, per_slice, cache, family, key, lend)
    source = _source(
        dataset, split, records, rows, backbone.preprocess, batch_size, num_workers, device, images, spec.view
    )
    backbone = backbone.to(device).eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    writer = cache.writer(key)
    out = _Output(writer, rows.n, spec.dtype)
    start = time.perf_counter()
    try:
        _write_row_index(out, rows)
        if rows.lent:
            _write_lent(out, rows.lent)
            if progress is not None:
                progress(len(records) - len(rows.todo))
        with source:
            n_forward = _run_backbone(
                backbone, source, rows, out, spec, batch_size, device, volumes, progress
            )
        elapsed = time.perf_counter() - start
        decode_s = source.info.get("decode_s", 0.0)
        stats = ExtractStats(
            cache_hit=False,
            n_images=rows.n,
            wall_time_s=elapsed,
            imgs_per_s=n_forward / elapsed if elapsed > 0 else 0.0,
            peak_mem_mb=peak_memory_mb(device),
            device=str(device),
            extra={
                "forward_images": n_forward,
                "reused_rows": len(rows.lent),
                **source.info,
                "decode_s": round(decode_s, 4),
                # what the loop did besides waiting for data: forward passes and writing features
                "forward_s": round(max(elapsed - decode_s, 0.0), 4),
            },
        )
        out.arrays.clear()
        ids = (
            [f"{r.sample_id}#{k}" for r, d in zip(records, rows.depths, strict=True) for k in range(d)]
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
                "family": family,
                "precision": precision,
                **({"per_slice": True, "volumes": [r.sample_id for r in records]} if per_slice else {}),
            },
        )
    except BaseException:
        out.arrays.clear()
        writer.abort()
        raise
    cache.add_to_family(family, key)
    return fs, stats


def _source(
    dataset: Dataset,
    split: str,
    records: list[Record],
    rows: _Rows,
    preprocess: Preprocess,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    images: ImageCache | None,
    view: AugmentView | None = None,
) -> CachedSource | DecodeSource:
    """The decoded-image cache when it serves the whole split; else per-image decoding of the records
    to run (rows lent by other entries leave only some of them, which a new entry would not cover;
    an augmented view draws its own pixels from each decoded image)."""
    todo = [records[i] for i in rows.todo]
    why = "" if images is None else "not used: augmented view" if view is not None else "not used: rows lent"
    if images is None or view is not None or len(todo) < len(records):
        return DecodeSource(dataset, todo, preprocess, batch_size, num_workers, device, why, view)
    depths = None
    if dataset.ndim == 3:
        depths = rows.depths if rows.per_slice else volume_depths(dataset, records)
    return CachedSource(images, dataset, split, records, preprocess, batch_size, num_workers, device, depths)


def _write_row_index(out: _Output, rows: _Rows) -> None:
    """The per-row image identities and, for per-slice entries, each row's volume and slice."""
    out.allocate(ROW_KEYS, (rows.n,), ROW_KEY_DTYPE)[:] = [i.encode() for i in rows.identities]
    if rows.per_slice:
        volume = out.allocate("volume", (rows.n,), "int32")
        slices = out.allocate("slice", (rows.n,), "int32")
        volume[:] = np.repeat(np.arange(len(rows.records)), rows.depths)
        slices[:] = np.concatenate([np.arange(d) for d in rows.depths])


def _write_lent(out: _Output, lent: dict[int, tuple[FeatureSet, int]]) -> None:
    """Allocate the feature arrays the lending entries hold and copy the lent rows into them."""
    some = next(iter(lent.values()))[0]
    names = [k for k in some.arrays if k not in (ROW_KEYS, "volume", "slice")]
    for name in names:
        a = some.arrays[name]
        out.allocate(name, (out.n, *a.shape[1:]), out.dtype)
    _copy_lent(lent, out.arrays, names)


def _run_backbone(
    backbone: Backbone,
    loader: Iterable[torch.Tensor],
    rows: _Rows,
    out: _Output,
    spec: FeatureSpec,
    batch_size: int,
    device: torch.device,
    volumes: bool,
    progress: Callable[[int], None] | None,
) -> int:
    """Features of the records ``rows.todo`` (``loader``'s items) into their rows; returns the number of
    images (slices, for volumes) through the backbone."""
    n_forward = 0
    behind = _Behind(out, device)
    with torch.inference_mode(), extraction_autocast(device, backbone):
        pos = 0
        for batch in loader:
            if rows.per_slice:
                n_forward += _put_slices(backbone, batch, rows.todo[pos], rows, out, spec, batch_size, device)
                pos += 1
                if progress is not None:
                    progress(1)
                continue
            if volumes:
                feats = _forward_volume(backbone, batch[0], spec, batch_size, device)
                n_forward += batch.shape[1]
            else:
                feats = _forward(backbone, batch.to(device, non_blocking=True), spec)
                n_forward += batch.shape[0]
            b = next(iter(feats.values())).shape[0]
            behind.put(rows.starts[np.asarray(rows.todo[pos : pos + b])], feats)
            pos += b
            if progress is not None:
                progress(b)
        behind.flush()
    return n_forward


class _Behind:
    """Writes a batch's features. On CUDA the copy to the host is queued without waiting and the batch
    is written once the next one has been queued, so the device never idles on a copy."""

    def __init__(self, out: _Output, device: torch.device) -> None:
        self.out, self.cuda = out, device.type == "cuda"
        self.pending: tuple[np.ndarray, dict[str, torch.Tensor], Any] | None = None

    def put(self, where: np.ndarray, feats: dict[str, torch.Tensor]) -> None:
        if not self.cuda:
            for name, t in feats.items():
                self.out.put(name, where, t)
            return
        # non-blocking copies to the host land in pinned memory; the event says when they are there
        host = {name: t.float().to("cpu", non_blocking=True) for name, t in feats.items()}
        done = torch.cuda.Event()
        done.record()
        self.flush()
        self.pending = (where, host, done)

    def flush(self) -> None:
        if self.pending is not None:
            where, host, done = self.pending
            self.pending = None
            done.synchronize()
            for name, t in host.items():
                self.out.put(name, where, t)


def _put_slices(
    backbone: Backbone,
    batch: torch.Tensor,
    i: int,
    rows: _Rows,
    out: _Output,
    spec: FeatureSpec,
    batch_size: int,
    device: torch.device,
) -> int:
    """Features of volume ``i`` (``batch``: its (1, D, 3, R, R) slices) into one row per slice; returns D."""
    depth = rows.depths[i]
    if batch.shape[1] != depth:
        raise ValueError(f"{rows.records[i].image.path}: read {batch.shape[1]} slices, header says {depth}")
    for k in range(0, depth, batch_size):
        feats = _forward(backbone, batch[0, k : k + batch_size].to(device), spec)
        b = next(iter(feats.values())).shape[0]
        for name, t in feats.items():
            out.put(name, slice(rows.starts[i] + k, rows.starts[i] + k + b), t)
    return depth


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
