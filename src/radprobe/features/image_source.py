"""Where extraction's batches come from: decoded per image on the CPU (:class:`DecodeSource`, the path
without the decoded-image cache) or read from / decoded into an entry of it (:class:`CachedSource`).

Either yields what the backbone takes: normalised (B, 3, R, R) batches, or (1, D, 3, R, R) per
volume. ``info`` says which path ran, how long the loop waited for data (``decode_s``) and how many
images were decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from radprobe.features.images import (
    _SCALE,
    PIXELS,
    ImageCache,
    RowFile,
    _collate,
    _exact_in,
    _Geometry,
    check_space,
    image_key,
    prefetch,
    reserve,
    timed,
    to_float,
)

if TYPE_CHECKING:
    from filelock import FileLock

    from radprobe.backbones.base import Preprocess
    from radprobe.data import Dataset
    from radprobe.data.records import Record
    from radprobe.features.cache import EntryWriter, FeatureSet
    from radprobe.features.views import AugmentView

_COMPACT_ROWS = 1024  # rows converted at a time when an entry is narrowed to uint8/uint16
# torch before 2.3 has no uint16: such pixels are read by numpy and widened (see ``_read``)
_TORCH_DTYPES = {np.dtype("uint8"): torch.uint8, np.dtype("float32"): torch.float32}
if hasattr(torch, "uint16"):
    _TORCH_DTYPES[np.dtype("uint16")] = torch.uint16


class _Images(TorchDataset):
    """Decoded, preprocessed images of one split (each through ``view`` first, when given); volumes
    come out as (D, 3, R, R) slice stacks."""

    def __init__(
        self, dataset: Dataset, records: list[Record], preprocess: Preprocess, view: AugmentView | None = None
    ) -> None:
        self.dataset = dataset
        self.records = records
        self.preprocess = preprocess
        self.view = view

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.dataset.load_image(self.records[i])
        if self.view is not None:
            img = self.view(img, self.records[i].sample_id)
        if self.dataset.ndim == 3:
            return torch.stack([self.preprocess(s) for s in img])
        return self.preprocess(img)


class DecodeSource:
    """Every image decoded and preprocessed on the CPU, in DataLoader workers or inline."""

    def __init__(
        self,
        dataset: Dataset,
        records: list[Record],
        preprocess: Preprocess,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        why: str = "",
        view: AugmentView | None = None,
    ) -> None:
        volumes = dataset.ndim == 3
        self.loader = DataLoader(
            _Images(dataset, records, preprocess, view),
            batch_size=1 if volumes else batch_size,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        self.info: dict[str, Any] = {"data_path": "decode", "decode_s": 0.0, "decoded_images": len(records)}
        if why:
            self.info["image_cache"] = why

    def __enter__(self) -> DecodeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Iterator[torch.Tensor]:
        clock: dict[str, float] = {}
        try:
            yield from timed(self.loader, clock)
        finally:
            self.info["decode_s"] = clock.get("wait_s", 0.0)


def decoded_split(
    cache: ImageCache,
    dataset: Dataset,
    split: str,
    preprocess: Preprocess,
    num_workers: int = 0,
    depths: list[int] | None = None,
) -> FeatureSet | None:
    """A split's decoded-image entry, decoded now if absent (e.g. for training, which then reads
    each image from it every epoch); None when the split cannot be held (colour after grayscale).
    Volumes need their slice counts (``depths``): the entry then holds one row per slice."""
    records = dataset.split(split)
    src = CachedSource(
        cache, dataset, split, records, preprocess, 64, num_workers, torch.device("cpu"), depths
    )
    with src:
        if src.entry is not None:
            return src.entry
        for _ in src:
            pass
    return cache.open(src.key) if "image_cache" not in src.info else None


class CachedSource:
    """A split at one geometry from its decoded-image entry; decoded into a new entry when there is
    none (the lock of its key held meanwhile, so concurrent extractions decode it once)."""

    def __init__(
        self,
        cache: ImageCache,
        dataset: Dataset,
        split: str,
        records: list[Record],
        preprocess: Preprocess,
        batch_size: int,
        num_workers: int,
        device: torch.device,
        depths: list[int] | None = None,
    ) -> None:
        self.cache, self.dataset, self.split, self.records = cache, dataset, split, records
        self.preprocess, self.batch_size = preprocess, batch_size
        self.num_workers, self.device = num_workers, device
        self.volumes = dataset.ndim == 3
        self.depths = depths if self.volumes else None
        self.n_rows = int(sum(self.depths)) if self.depths is not None else len(records)
        self.key = image_key(dataset, split, preprocess)
        self.entry: FeatureSet | None = None
        self.info: dict[str, Any] = {"image_entry": self.key, "decode_s": 0.0, "decoded_images": 0}
        self._lock: FileLock | None = None
        self._writer: EntryWriter | None = None
        self._pixels: RowFile | None = None
        self._exact = {"uint8": True, "uint16": True}
        self._complete = False

    def __enter__(self) -> CachedSource:
        self.entry = self.cache.open(self.key)
        if self.entry is None:
            self._lock = self.cache.lock(self.key)
            self._lock.acquire()
            self.entry = self.cache.open(self.key)  # another process may have built it meanwhile
            if self.entry is not None:
                self._release()
        self.info["data_path"] = "image-cache-hit" if self.entry is not None else "image-cache-build"
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._writer is not None:
                # complete images are valid whatever failed after them; anything less is dropped
                if self._complete:
                    try:
                        self._commit()
                    except BaseException:
                        if self._writer is not None:
                            self._writer.abort()
                        raise
                else:
                    self._writer.abort()
        finally:
            if self._pixels is not None:
                self._pixels.close()
            self._writer = None
            self._pixels = None
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        clock: dict[str, float] = {}
        try:
            yield from self._read(clock) if self.entry is not None else self._build(clock)
        finally:
            self.info["decode_s"] = clock.get("wait_s", 0.0)

    # ------------------------------------------------------------------ reading an entry

    def _read(self, clock: dict[str, float]) -> Iterator[torch.Tensor]:
        assert self.entry is not None
        pixels = self.entry.arrays[PIXELS]
        storage = str(self.entry.meta["storage"])
        self.info["image_storage"] = storage
        if len(pixels) != self.n_rows:
            raise ValueError(
                f"decoded-image entry {self.entry.path} has {len(pixels)} rows, expected {self.n_rows}"
            )
        if self.volumes:
            vol = np.asarray(self.entry.arrays["volume"])
            ends = np.searchsorted(vol, np.arange(len(self.records)), side="right")
            spans = list(zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True))
        else:
            spans = [
                (a, min(a + self.batch_size, self.n_rows)) for a in range(0, self.n_rows, self.batch_size)
            ]
        pin = self.device.type == "cuda"

        def load() -> Iterator[torch.Tensor]:
            f = RowFile(pixels)
            try:
                for a, b in spans:
                    shape, dtype = (b - a, *pixels.shape[1:]), _TORCH_DTYPES.get(pixels.dtype)
                    if dtype is None:
                        arr = np.empty(shape, pixels.dtype)
                        f.read(a, arr)
                        yield torch.from_numpy(arr.astype(np.int32))
                        continue
                    t = torch.empty(shape, dtype=dtype, pin_memory=pin)
                    f.read(a, t.numpy())
                    yield t
            finally:
                f.close()

        for t in timed(prefetch(load()), clock):
            x = self.preprocess.normalise(to_float(t.to(self.device, non_blocking=True), storage))
            yield x[None] if self.volumes else x

    # ------------------------------------------------------------------ building an entry

    def _build(self, clock: dict[str, float]) -> Iterator[torch.Tensor]:
        loader = DataLoader(
            _Geometry(self.dataset, self.records, self.preprocess),
            batch_size=1 if self.volumes else self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=_collate,
        )
        # without worker processes a thread decodes the next batch while this one runs
        batches = loader if self.num_workers > 0 else prefetch(iter(loader))
        row = 0
        for i, x in enumerate(timed(batches, clock)):
            rows = x[0] if self.volumes else x
            if self.depths is not None and len(rows) != self.depths[i]:
                raise ValueError(
                    f"{self.records[i].image.path}: read {len(rows)} slices, header says {self.depths[i]}"
                )
            if row == 0:
                self._allocate(rows.shape[1])
            rows = self._store(row, rows, i)
            row += len(rows)
            self.info["decoded_images"] += 1 if self.volumes else len(rows)
            y = self.preprocess.normalise(rows.to(self.device, non_blocking=True))
            yield y[None] if self.volumes else y
        self._complete = self._writer is not None and row == self.n_rows

    def _allocate(self, channels: int) -> None:
        r = self.preprocess.resolution
        cells = self.n_rows * channels * r * r
        # float32 while decoding, plus room for the narrowed copy made at commit
        check_space(self.cache.root, cells * 4 + cells * 2 + (1 << 20))
        self._writer = self.cache.writer(self.key)
        self._pixels = RowFile(self._writer.allocate(PIXELS, (self.n_rows, channels, r, r), "float32"), True)
        self._channels = channels
        reserve(self._writer.tmp / f"{PIXELS}.npy")
        if self.volumes:
            assert self.depths is not None
            vol = self._writer.allocate("volume", (self.n_rows,), "int32")
            vol[:] = np.repeat(np.arange(len(self.records), dtype=np.int32), self.depths)

    def _store(self, row: int, rows: torch.Tensor, i: int) -> torch.Tensor:
        """Write ``rows`` at ``row`` of the entry; returns them as the entry holds them (grayscale
        widened to a colour entry's three channels)."""
        if self._pixels is None:
            return rows
        c = self._channels
        if rows.shape[1] != c:
            if c == 1:  # a colour image after grayscale ones: this split is not cached, features go on
                self.info["image_cache"] = (
                    f"not cached: {self.records[i].image.path} is colour, earlier images grayscale"
                )
                assert self._writer is not None
                self._pixels.close()
                self._writer.abort()
                self._writer, self._pixels = None, None
                return rows
            rows = rows.expand(-1, c, -1, -1)
        a = rows.numpy()
        self._pixels.write(row, a)
        if self._exact["uint8"]:
            self._exact["uint8"] = _exact_in(a, "uint8")
        if not self._exact["uint8"] and self._exact["uint16"]:
            self._exact["uint16"] = _exact_in(a, "uint16")
        return rows

    def _commit(self) -> None:
        assert self._writer is not None and self._pixels is not None
        storage = next((s for s in ("uint8", "uint16") if self._exact[s]), "float32")
        if storage != "float32":
            self._narrow(storage)
        elif self._pixels is not None:
            self._pixels.close()
            self._pixels = None
        why = {
            "uint8": "every value is k/255 (8-bit images at their own size): exact",
            "uint16": "every value is k/65535 (16-bit images at their own size): exact",
            "float32": "resized, windowed or stretched values lie on no integer grid: float32 keeps them",
        }[storage]
        ids = (
            [f"{r.sample_id}#{k}" for r, d in zip(self.records, self.depths, strict=True) for k in range(d)]
            if self.depths is not None
            else [r.sample_id for r in self.records]
        )
        meta = {
            "dataset": self.dataset.name,
            "split": self.split,
            "geometry": self.preprocess.geometry_dict(),
            "storage": storage,
            "storage_why": why,
            "images": len(self.records),
            "channels": self._channels,
            "decode_s": self.info.get("decode_s", 0.0),
        }
        fs = self._writer.commit(ids, meta)
        self._writer = None
        self.cache.mark_verified(fs.key)
        self.info["image_storage"] = storage

    def _narrow(self, storage: str) -> None:
        """Replace the float32 pixels by the ``storage`` integers that give them back exactly."""
        assert self._writer is not None and self._pixels is not None
        src, scale = self._pixels, np.float32(_SCALE[storage])
        shape = self._writer.arrays[PIXELS].shape
        final = self._writer.tmp / f"{PIXELS}.npy"
        tmp = self._writer.tmp / f"{PIXELS}.narrow.npy"
        narrow = np.lib.format.open_memmap(tmp, mode="w+", dtype=storage, shape=shape)
        reserve(tmp)
        dst = RowFile(narrow, writable=True)
        try:
            for a in range(0, shape[0], _COMPACT_ROWS):
                chunk = np.empty((min(_COMPACT_ROWS, shape[0] - a), *shape[1:]), np.float32)
                src.read(a, chunk)
                dst.write(a, np.rint(chunk * scale))
        finally:
            dst.close()
        src.close()
        self._pixels = None
        os.replace(tmp, final)
        self._writer.arrays[PIXELS] = narrow
