"""Writers shared by the dataset builders: PNGs, CSV manifests, YAML sidecars, READMEs."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_png(path: Path, array: np.ndarray) -> None:
    """A single-channel uint8 or uint16 array as a lossless PNG (8- or 16-bit greyscale)."""
    from PIL import Image

    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2D uint8/uint16 array, got {array.dtype} {array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", optimize=False)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows (dicts with the same keys, in column order) as a CSV file."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def sidecar_path(manifest: Path) -> Path:
    """``<stem>.radprobe.yaml`` beside a manifest, the name the dataset layer looks for."""
    return manifest.with_name(f"{manifest.name.split('.')[0]}.radprobe.yaml")


def write_sidecar(manifest: Path, options: dict[str, Any], comment: str = "") -> None:
    """Dataset options for ``manifest``; ``comment`` lines go on top (the layer reads only options)."""
    import yaml

    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    sidecar_path(manifest).write_text(head + yaml.safe_dump(options, sort_keys=False))


def write_readme(folder: Path, text: str) -> None:
    (folder / "README.txt").write_text(text.strip() + "\n")
