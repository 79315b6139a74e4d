"""Decoded-image cache: each split decoded once per input geometry, read back by every backbone of it.

A backbone's :class:`~radprobe.backbones.base.Preprocess` is a *geometry* (resolution, interpolation,
min-max stretch: what :meth:`Preprocess.geometry` computes on the CPU) followed by its own mean/std.
An entry ``<RADPROBE_CACHE>/images/<key>/`` holds one split's geometry output — ``pixels`` (rows, C,
R, R), one row per image (per slice for volumes, with ``volume``: row -> volume) — keyed by the
manifest digest, the split and the geometry, so backbones differing only in normalisation read the
same entry. Entries are :class:`~radprobe.features.cache.FeatureCache` entries: sha256 per file,
built in a temporary folder and renamed into place, locked per key, listed and pruned by
``radprobe cache``.

Storage is exact: ``uint8`` where every stored value is ``k / 255`` bit for bit (8-bit sources at
their own size), ``uint16`` where every value is ``k / 65535`` (16-bit PNG), else ``float32`` (a
resize, a window or a min-max stretch makes values no integer grid holds; float16 would move
features by ~1e-3). The meta says which and why. Batches go to the device as stored (pinned, non-
blocking on CUDA) and are turned into floats by a lookup table and normalised there, so features
equal those of the per-image CPU path.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate

from radprobe.errors import RadprobeError
from radprobe.features.cache import EntryInfo, FeatureCache, FeatureSet
from radprobe.utils import digest

if TYPE_CHECKING:
    from radprobe.backbones.base import Preprocess
    from radprobe.data import Dataset
    from radprobe.data.records import Record

IMAGE_FORMAT = 1
PIXELS = "pixels"
_SCALE = {"uint8": 255, "uint16": 65535}
_LUTS: dict[str, np.ndarray] = {}
# entry folder -> manifest mtime when this process last checked every byte of it
_VERIFIED: dict[str, int] = {}


def image_key(dataset: Dataset, split: str, preprocess: Preprocess) -> str:
    """Key of one split's decoded images at one geometry (mean/std do not enter)."""
    return digest(
        {
            "v": IMAGE_FORMAT,
            "manifest": dataset.manifest_digest(),
            "split": split,
            "split_digest": dataset.split_digest(split),
            "geometry": preprocess.geometry_dict(),
        },
        length=32,
    )


def _lut(storage: str) -> np.ndarray:
    """float32 value of each stored integer: ``k / scale`` computed as the readers compute it."""
    if storage not in _LUTS:
        scale = _SCALE[storage]
        _LUTS[storage] = np.arange(scale + 1, dtype=np.float32) / np.float32(scale)
    return _LUTS[storage]


def _exact_in(x: np.ndarray, storage: str) -> bool:
    """Whether ``storage`` integers give back every value of ``x`` bit for bit."""
    scale = _SCALE[storage]
    q = np.rint(x * np.float32(scale))
    if q.size and (q.min() < 0 or q.max() > scale):
        return False
    return bool(np.array_equal(_lut(storage)[q.astype(np.int64)], x))


def stored_tensor(rows: np.ndarray) -> torch.Tensor:
    """Stored pixels as a tensor :func:`to_float` can read (uint16 widened to int32: torch indexes
    int32, and older torch has no uint16)."""
    return torch.from_numpy(rows.astype(np.int32) if rows.dtype == np.uint16 else rows)


def to_float(x: torch.Tensor, storage: str) -> torch.Tensor:
    """Stored pixels (on their device) as the float32 geometry values they stand for."""
    if storage == "float32":
        return x
    lut = torch.from_numpy(_lut(storage)).to(x.device)
    return lut[x.long()]


class ImageCache(FeatureCache):
    """Decoded-image entries (``<RADPROBE_CACHE>/images``), stored and checked like feature entries."""

    def open(self, key: str) -> FeatureSet | None:
        """The entry, checksummed in full on its first open in this process (later opens of the same,
        unchanged entry check sizes and headers only); a corrupt one is removed and None returned."""
        manifest = self.entry_path(key) / "manifest.json"
        try:
            stamp = manifest.stat().st_mtime_ns
        except OSError:
            stamp = 0
        where = str(self.entry_path(key))
        verify = "size" if stamp and _VERIFIED.get(where) == stamp else "full"
        fs = self.get(key, verify=verify)
        if fs is not None and stamp:
            _VERIFIED[where] = stamp
        return fs

    def mark_verified(self, key: str) -> None:
        """Record that ``key`` was just checked in full (a fresh commit), so this process's next open
        checks sizes only."""
        manifest = self.entry_path(key) / "manifest.json"
        if manifest.is_file():
            _VERIFIED[str(self.entry_path(key))] = manifest.stat().st_mtime_ns

    def entries(self) -> list[EntryInfo]:
        """Entries for ``radprobe cache list/prune``: backbone ``(images)``, storage and size as weights."""
        out = []
        for e in super().entries():
            try:
                meta = json.loads((e.path / "manifest.json").read_text()).get("meta", {})
                what = f"{meta['geometry']['resolution']}px {meta['storage']}"
            except (OSError, ValueError, KeyError, TypeError):
                what = "?"
            out.append(replace(e, backbone="(images)", weights=what))
        return out


class _Geometry(TorchDataset):
    """Images of one split through the geometry only (volumes: (D, C, R, R) slice stacks)."""

    def __init__(self, dataset: Dataset, records: list[Record], preprocess: Preprocess) -> None:
        self.dataset, self.records, self.preprocess = dataset, records, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.dataset.load_image(self.records[i])
        if self.dataset.ndim == 3:
            return torch.stack([self.preprocess.geometry(s) for s in img])
        return self.preprocess.geometry(img)


def _collate(items: list[torch.Tensor]) -> torch.Tensor:
    """Stack; grayscale joins colour images of the same batch as three equal channels (exact: the
    normalisation broadcasts one channel to three the same way)."""
    if len({t.shape[-3] for t in items}) > 1:
        items = [t.expand(*t.shape[:-3], 3, *t.shape[-2:]) for t in items]
    return default_collate(items)


def default_workers(device: torch.device) -> int:
    """Decoding processes that suit the machine: min(cores, 8) beside a GPU; none on a small CPU
    (workers compete with the forward pass for the same cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device.type == "cuda":
        return min(cores, 8)
    return 0 if cores <= 2 else min(cores // 4, 4)


_END = object()


def prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Items of ``it`` produced by a background thread, ``depth`` ahead of the consumer."""
    q: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for x in it:
                while not stop.is_set():
                    try:
                        q.put(x, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    t = threading.Thread(target=run, daemon=True, name="radprobe-prefetch")
    t.start()
    try:
        while (x := q.get()) is not _END:
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        t.join(timeout=5)


def check_space(root: Path, need: int) -> None:
    """One line, before anything is written, when the disk under ``root`` cannot hold ``need`` bytes."""
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if need > free:
        raise RadprobeError(
            f"decoded-image cache: {need / 2**30:.2f} GiB needed in {root}, {free / 2**30:.2f} GiB free; "
            "point RADPROBE_CACHE at a larger disk or run with --no-image-cache"
        )


def reserve(path: Path) -> None:
    """Claim the disk blocks of a freshly allocated array file, so a full disk fails here with an
    error rather than later with SIGBUS on a memory-mapped write."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return  # a file system that cannot reserve blocks: the free-space check stands alone
        raise RadprobeError(
            f"decoded-image cache: cannot reserve {os.fstat(fd).st_size / 2**30:.2f} GiB for {path} ({e}); "
            "point RADPROBE_CACHE at a larger disk or run with --no-image-cache"
        ) from None
    finally:
        os.close(fd)


class RowFile:
    """Rows of an entry's ``.npy`` array read and written by positioned file I/O rather than through
    its memory map: an entry's pages stay in the page cache and never count towards the process's
    resident memory, whatever the dataset size."""

    def __init__(self, arr: np.memmap, writable: bool = False) -> None:
        self.path, self.offset, self.dtype = str(arr.filename), int(arr.offset), arr.dtype
        self.row_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
        self.fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def read(self, row: int, out: np.ndarray) -> None:
        """Fill the contiguous ``out`` with the rows from ``row`` on."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, start = 0, self.offset + row * self.row_bytes
        while pos < len(view):
            n = os.preadv(self.fd, [view[pos:]], start + pos)
            if n == 0:
                raise ValueError(f"{self.path}: ends before row {row + len(out)}")
            pos += n

    def write(self, row: int, rows: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1).view(np.uint8))
        pos, start = 0, self.offset + row * self.row_bytes
        while pos < len(view):
            pos += os.pwrite(self.fd, view[pos:], start + pos)

    def close(self) -> None:
        os.close(self.fd)


def timed(it: Iterator[Any], clock: dict[str, float]) -> Iterator[Any]:
    """``it``, adding the time spent waiting for each item to ``clock["wait_s"]``."""
    it = iter(it)
    while True:
        t0 = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            clock["wait_s"] = clock.get("wait_s", 0.0) + time.perf_counter() - t0
            return
        clock["wait_s"] = clock.get("wait_s", 0.0) + time.perf_counter() - t0
        yield x
