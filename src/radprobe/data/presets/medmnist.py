"""MedMNIST v2 / MedMNIST+ preset: the published ``.npz`` files, their splits, label names and sizes.

``medmnist:<file.npz>`` (set and size from the file name) or ``medmnist:<dir>?name=<set>&size=<n>``.
Files are named ``<set>.npz`` for 28 px and ``<set>_<size>.npz`` otherwise, as on Zenodo.
``download_medmnist`` fetches one with its md5 for users with a network (never called in tests).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from radprobe.data.formats.common import Source, read_options
from radprobe.data.formats.npz import index_npz, npz_shapes
from radprobe.data.presets.medmnist_info import MEDMNIST, ZENODO, MedInfo
from radprobe.data.spec import Spec, opt_int
from radprobe.errors import DataError

SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)


def file_name(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def url(name: str, size: int) -> str:
    return f"{ZENODO}/{file_name(name, size)}?download=1"


def info(name: str) -> MedInfo:
    key = name.strip().lower()
    if key not in MEDMNIST:
        raise DataError(f"unknown MedMNIST set {name!r}; sets: {', '.join(MEDMNIST)}")
    return MEDMNIST[key]


def sizes(name: str) -> tuple[int, ...]:
    return SIZES_3D if info(name).ndim == 3 else SIZES_2D


def _check_size(name: str, size: int) -> None:
    if size not in sizes(name):
        raise DataError(
            f"MedMNIST {name} is published at sizes {', '.join(map(str, sizes(name)))}, not {size}"
        )


def parse_file_name(path: Path) -> tuple[str, int] | None:
    """``pneumoniamnist_224.npz`` -> ("pneumoniamnist", 224); None for other names."""
    m = re.fullmatch(r"([a-z0-9]+?)(?:_(\d+))?\.npz", path.name.lower())
    if m is None or m.group(1) not in MEDMNIST:
        return None
    return m.group(1), int(m.group(2) or 28)


def resolve(spec: Spec) -> tuple[Path, str, int]:
    """The npz file, set name and size a spec addresses."""
    path = Path(spec.path)
    opts = spec.options
    size_opt = opt_int(opts, "size")
    if path.is_dir():
        if not opts.get("name"):
            raise DataError(
                f"medmnist:{path} is a folder; say which set with ?name=<set>&size=<n> "
                f"(sets: {', '.join(MEDMNIST)})"
            )
        name, size = opts["name"].strip().lower(), size_opt or 28
        info(name)
        _check_size(name, size)
        target = path / file_name(name, size)
        if not target.is_file():
            raise DataError(
                f"medmnist: missing {target.name} in {path}; download it from {url(name, size)} "
                f"(md5 {info(name).md5[size]}) or call radprobe.data.presets.download_medmnist"
                f"({name!r}, {size}, {str(path)!r})"
            )
        return target, name, size
    parsed = parse_file_name(path)
    name = (opts.get("name") or (parsed[0] if parsed else "")).strip().lower()
    if not name:
        raise DataError(
            f"medmnist: cannot tell the set from the file name {path.name}; expected <set>.npz or "
            f"<set>_<size>.npz, or give name=<set>"
        )
    size = size_opt or (parsed[1] if parsed else 28)
    info(name)
    _check_size(name, size)
    return path, name, size


def _expected_shape(meta: MedInfo, size: int) -> tuple[int, ...]:
    if meta.ndim == 3:
        return (size, size, size)
    return (size, size) if meta.channels == 1 else (size, size, meta.channels)


def index_medmnist(spec: Spec) -> Source:
    path, name, size = resolve(spec)
    meta = info(name)
    shapes = npz_shapes(path)
    want = _expected_shape(meta, size)
    for split in ("train", "val", "test"):
        key = f"{split}_images"
        if key not in shapes:
            raise DataError(f"medmnist: {path.name} has no {key} array (has: {', '.join(sorted(shapes))})")
        got = shapes[key][1:]
        # Some 28 px grayscale releases carry a trailing channel axis of 1.
        if got != want and got != (*want, 1):
            raise DataError(
                f"medmnist: {path.name}:{key} holds images of shape {got}; {name} at size {size} has {want}"
            )
    pad = opt_int(spec.options, "pad")
    if pad is not None and meta.ndim == 3:
        raise DataError(f"medmnist: pad= applies to 2D sets; {name} is 3D")
    if pad is not None and pad < size:
        raise DataError(f"medmnist: pad={pad} is smaller than the images ({size} px); padding never shrinks")
    inner = {k: v for k, v in spec.options.items() if k in ("window", "norm", "bits")}
    inner["classes"] = ",".join(str(i) for i in range(len(meta.labels)))
    inner["task"] = "" if meta.task == "multilabel" else meta.task
    src = index_npz(Spec(spec.text, "npz", str(path), inner))
    src.classes = meta.labels
    src.task = meta.task  # type: ignore[assignment]
    src.name = path.name[: -len(".npz")]
    src.modality = meta.modality
    src.read = read_options(spec.options)
    # MedMNIST publishes no patient ids; its fixed splits were drawn by the source datasets' rules,
    # so the "no patient ids, splits may leak" warning would only be noise here.
    src.has_patients = True
    src.conventions = {
        "patients": "none published; the fixed splits are used",
        "set": name,
        "size": str(size),
        "pad": str(pad) if pad else "none",
        "split": "published train/val/test arrays",
    }
    if meta.ordinal:
        src.conventions["labels"] = "ordinal grades read as classes"
    return src


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_medmnist(name: str, size: int = 28, root: str | os.PathLike[str] = ".") -> Path:
    """Fetch ``<set>[_<size>].npz`` from Zenodo into ``root`` and verify its md5 (needs a network)."""
    import shutil
    import urllib.request

    name = name.strip().lower()
    meta = info(name)
    _check_size(name, size)
    target = Path(root) / file_name(name, size)
    if target.is_file() and md5sum(target) == meta.md5[size]:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        with urllib.request.urlopen(url(name, size), timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        got = md5sum(tmp)
        if got != meta.md5[size]:
            raise DataError(f"download of {target.name} has md5 {got}, expected {meta.md5[size]}")
        os.replace(tmp, target)
    except OSError as e:
        raise DataError(f"cannot download {url(name, size)}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return target
