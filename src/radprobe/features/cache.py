"""Content-addressed, memory-mapped, atomic feature cache.

An entry is a directory ``<root>/<key>/`` holding one ``.npy`` file per array and a ``manifest.json``
written last. Entries are built in a temporary directory and renamed into place, so a reader sees
either a complete entry or none. A manifest records every array's shape, dtype, byte length and
sha256; an entry that disagrees with its manifest is treated as absent, removed and rebuilt.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from radprobe.features.views import AugmentView
from radprobe.utils import digest, file_sha256

FORMAT_VERSION = 1
# Entries up to this size get a full sha256 check on every open; larger ones are checked by length
# and header on open (a full check stays available through ``verify="full"``).
FULL_VERIFY_BYTES = 1 << 30


@dataclass(frozen=True)
class FeatureSpec:
    """Which features to store: last ``n_blocks`` (cls, patch-mean) pairs and optional patch grids.

    ``view``: an augmented view of every image (:class:`radprobe.features.views.AugmentView`)
    instead of the image itself; it enters the key only when set, so other keys stay as they were.
    """

    n_blocks: int = 4
    grid_layers: tuple[int, ...] = ()
    dtype: str = "float32"
    view: AugmentView | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid_layers"] = list(self.grid_layers)
        del d["view"]
        if self.view is not None:
            d["view"] = self.view.to_dict()
        return d


def cache_key(
    *,
    backbone: Mapping[str, Any],
    preprocess: Mapping[str, Any],
    manifest_digest: str,
    split: str,
    split_digest: str,
    spec: FeatureSpec,
) -> str:
    """Digest of everything that determines the features of one split."""
    return digest(
        {
            "v": FORMAT_VERSION,
            "backbone": dict(backbone),
            "preprocess": dict(preprocess),
            "manifest": manifest_digest,
            "split": split,
            "split_digest": split_digest,
            "spec": spec.to_dict(),
        },
        length=32,
    )


@dataclass
class FeatureSet:
    """Features of one split, memory-mapped read-only from a cache entry."""

    key: str
    path: Path
    sample_ids: list[str]
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> np.ndarray:
        return self.arrays["cls"]

    @property
    def pooled(self) -> np.ndarray:
        return self.arrays["pooled"]

    @property
    def blocks(self) -> np.ndarray:
        return self.arrays["blocks"]

    def grid(self, layer: int) -> np.ndarray:
        return self.arrays[f"grid_{layer}"]

    @property
    def precision(self) -> str:
        """The precision the features were computed in (entries written before the field: fp32)."""
        return str(self.meta.get("precision", "fp32"))

    def __len__(self) -> int:
        return len(self.sample_ids)


class EntryWriter:
    """Builds one entry in a temporary directory; ``commit`` makes it visible atomically."""

    def __init__(self, cache: FeatureCache, key: str) -> None:
        self.cache = cache
        self.key = key
        cache.root.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=cache.root))
        self.arrays: dict[str, np.ndarray] = {}

    def allocate(self, name: str, shape: tuple[int, ...], dtype: str | np.dtype) -> np.ndarray:
        """A writable memory-mapped array that becomes ``<name>.npy`` in the entry."""
        arr = np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        self.arrays[name] = arr
        return arr

    def commit(self, sample_ids: list[str], meta: Mapping[str, Any]) -> FeatureSet:
        files = {}
        for name, arr in self.arrays.items():
            if isinstance(arr, np.memmap):
                arr.flush()
            p = self.tmp / f"{name}.npy"
            files[name] = {
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "bytes": p.stat().st_size,
                "sha256": file_sha256(p),
            }
        self.arrays.clear()
        (self.tmp / "sample_ids.json").write_text(json.dumps(sample_ids))
        manifest = {
            "format": FORMAT_VERSION,
            "key": self.key,
            "n": len(sample_ids),
            "files": files,
            "sample_ids_sha256": file_sha256(self.tmp / "sample_ids.json"),
            "meta": dict(meta),
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        final = self.cache.entry_path(self.key)
        if final.exists():  # a concurrent writer won, or a broken entry is being replaced
            shutil.rmtree(final)
        self.tmp.rename(final)
        fs = self.cache.get(self.key)
        assert fs is not None, f"freshly written cache entry {final} failed validation"
        return fs

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass(frozen=True)
class EntryInfo:
    """What ``radprobe cache list`` shows of one entry (read from its manifest, arrays untouched)."""

    key: str
    path: Path
    bytes: int
    rows: int
    created: float  # seconds since the epoch: when the entry was committed
    backbone: str
    weights: str
    dataset: str
    split: str
    precision: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def select_prune(
    entries: list[EntryInfo],
    *,
    backbone: str | None = None,
    dataset: str | None = None,
    older_than_s: float | None = None,
    max_bytes: int | None = None,
    now: float | None = None,
) -> list[EntryInfo]:
    """Entries to remove: those matching every given filter; with ``max_bytes``, only the oldest of
    them, until what the cache keeps fits."""
    import time

    now = time.time() if now is None else now
    picked = [
        e
        for e in entries
        if (backbone is None or e.backbone == backbone)
        and (dataset is None or e.dataset == dataset)
        and (older_than_s is None or now - e.created > older_than_s)
    ]
    if max_bytes is None:
        return picked
    total = sum(e.bytes for e in entries)
    out = []
    for e in sorted(picked, key=lambda e: e.created):
        if total <= max_bytes:
            break
        out.append(e)
        total -= e.bytes
    return out


def _entry_label(path: Path) -> str:
    """`` (split S of dataset D)`` from an entry's manifest when it can still be read, else ''."""
    try:
        meta = json.loads((path / "manifest.json").read_text()).get("meta", {})
        return f" (split {meta['split']} of dataset {meta['dataset']})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""


class FeatureCache:
    """Directory of feature entries keyed by :func:`cache_key`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.problems: list[str] = []  # why ``get`` discarded entries, one line each, until taken

    def take_problems(self) -> list[str]:
        """The discarded entries' lines since the last call (each entry once)."""
        out, self.problems = list(dict.fromkeys(self.problems)), []
        return out

    def clean_stale(self, key: str | None = None) -> list[Path]:
        """Remove what an interrupted writer or remover left behind (``.<key>.<rand>.tmp`` and
        ``.removed`` folders): only where no process holds that key's lock, so a live extraction's
        temp folder is never touched. ``key``: only that key's leftovers (its lock must be held)."""
        if not self.root.is_dir():
            return []
        gone = []
        for path in self.root.glob(f".{key or '*'}.*"):
            if not path.is_dir() or not path.name.endswith((".tmp", ".removed")):
                continue
            owner = path.name[1:].split(".", 1)[0]
            if key is None:
                lock = FileLock(str(self.root / f".{owner}.lock"), timeout=0)
                try:
                    lock.acquire()
                except Timeout:
                    continue  # a writer of that key is at work
                try:
                    shutil.rmtree(path, ignore_errors=True)
                finally:
                    lock.release()
            else:
                shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
        return gone

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def lock(self, key: str) -> FileLock:
        """Inter-process lock so two extractors of the same key don't do the work twice."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f".{key}.lock"))

    def writer(self, key: str) -> EntryWriter:
        """A writer of entry ``key``; call with the key's lock held (leftovers of an interrupted
        writer of the same key go first)."""
        self.clean_stale(key)
        return EntryWriter(self, key)

    def entries(self) -> list[EntryInfo]:
        """Every committed entry, oldest first; unreadable manifests are skipped (``get`` rebuilds)."""
        out = []
        if not self.root.is_dir():
            return out
        for path in self.root.iterdir():
            manifest = path / "manifest.json"
            if path.name.startswith(".") or not manifest.is_file():
                continue
            try:
                m = json.loads(manifest.read_text())
                meta = m.get("meta", {})
                size = sum(int(f["bytes"]) for f in m.get("files", {}).values())
                created = manifest.stat().st_mtime
            except (OSError, ValueError, KeyError, TypeError):
                continue
            bb = meta.get("backbone") or {}
            out.append(
                EntryInfo(
                    key=path.name,
                    path=path,
                    bytes=size,
                    rows=int(m.get("n", 0)),
                    created=created,
                    backbone=str(bb.get("name", "?")),
                    weights=str(bb.get("weights_digest", "?")),
                    dataset=str(meta.get("dataset", "?")),
                    split=str(meta.get("split", "?")),
                    precision=str(meta.get("precision", "fp32")),
                )
            )
        return sorted(out, key=lambda e: e.created)

    def remove(self, key: str) -> None:
        """Delete an entry: renamed aside first, so no reader ever sees half of it. Open memory maps
        of it stay valid until closed."""
        path = self.entry_path(key)
        with self.lock(key):
            if path.exists():
                trash = self.root / f".{key}.{uuid.uuid4().hex[:8]}.removed"
                path.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
        for marker in (self.root / ".families").glob(f"*/{key}"):
            marker.unlink(missing_ok=True)

    def _family_dir(self, family: str) -> Path:
        return self.root / ".families" / family

    def add_to_family(self, family: str, key: str) -> None:
        """Record that entry ``key`` holds rows of feature family ``family`` (see :meth:`family`)."""
        d = self._family_dir(family)
        d.mkdir(parents=True, exist_ok=True)
        (d / key).touch()

    def family(self, family: str, exclude: str = "", verify: str = "auto") -> list[FeatureSet]:
        """Valid entries of one feature family (same backbone, preprocessing and spec), by key.

        Markers of entries that are gone or corrupt are dropped.
        """
        d = self._family_dir(family)
        if not d.is_dir():
            return []
        out = []
        for marker in sorted(d.iterdir()):
            if marker.name == exclude:
                continue
            fs = self.get(marker.name, verify=verify)
            if fs is None:
                marker.unlink(missing_ok=True)
            else:
                out.append(fs)
        return out

    def get(self, key: str, verify: str = "auto") -> FeatureSet | None:
        """Open an entry, or None when absent. A corrupt entry is removed and None returned.

        verify: "auto" (full checksum for entries under 1 GiB, else length/header), "full", "size".
        """
        path = self.entry_path(key)
        if not (path / "manifest.json").is_file():
            if path.exists():  # directory without manifest: never finished
                shutil.rmtree(path, ignore_errors=True)
            return None
        problem, manifest, arrays = self._validate(path, key, verify)
        if problem is not None:
            self.problems.append(f"cache entry {path}{_entry_label(path)} is corrupt ({problem}); rebuilding")
            shutil.rmtree(path, ignore_errors=True)
            return None
        sample_ids = json.loads((path / "sample_ids.json").read_text())
        return FeatureSet(key=key, path=path, sample_ids=sample_ids, arrays=arrays, meta=manifest["meta"])

    @staticmethod
    def _validate(
        path: Path, key: str, verify: str
    ) -> tuple[str | None, dict[str, Any], dict[str, np.ndarray]]:
        """(problem or None, manifest, the arrays memory-mapped while checking them)."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"unreadable manifest: {e}", {}, {}
        if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key:
            return "manifest format or key mismatch", manifest, {}
        files = manifest.get("files", {})
        total = sum(f["bytes"] for f in files.values())
        full = verify == "full" or (verify == "auto" and total <= FULL_VERIFY_BYTES)
        ids_path = path / "sample_ids.json"
        if not ids_path.is_file() or file_sha256(ids_path) != manifest.get("sample_ids_sha256"):
            return "sample_ids.json missing or altered", manifest, {}
        arrays: dict[str, np.ndarray] = {}
        for name, f in files.items():
            p = path / f"{name}.npy"
            if not p.is_file():
                return f"{p.name} missing", manifest, {}
            if p.stat().st_size != f["bytes"]:
                return f"{p.name} has {p.stat().st_size} bytes, expected {f['bytes']}", manifest, {}
            try:
                arr = np.load(p, mmap_mode="r")
            except (ValueError, OSError) as e:
                return f"{p.name} unreadable: {e}", manifest, {}
            if list(arr.shape) != f["shape"] or str(arr.dtype) != f["dtype"]:
                return f"{p.name} shape/dtype differ from manifest", manifest, {}
            if arr.shape[0] != manifest["n"]:
                return f"{p.name} has {arr.shape[0]} rows, expected {manifest['n']}", manifest, {}
            if full and file_sha256(p) != f["sha256"]:
                return f"{p.name} checksum mismatch", manifest, {}
            arrays[name] = arr
        return None, manifest, arrays
