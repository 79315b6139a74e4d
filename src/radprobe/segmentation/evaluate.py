"""``evaluate_segmentation``: dataset → masks → backbone → per-slice grid cache → heads → rows.

Mirrors the classification path of :mod:`radprobe.run.evaluate`: every protocol name, option and
value, the dataset's task, every mask (shape and labels) and the backbone are checked before anything
is written to ``cfg.out``; the feature cache is the only thing written earlier. One extraction
(all layers any requested head reads, float16, one row per image or slice) serves every head and
learning rate. Rows: one per (protocol[, shots], metric), see :mod:`radprobe.segmentation.metrics`.

Input resolution: ``--resolution`` when given; otherwise 448 (the paper's segmentation resolution,
snapped to the patch size) for real foundation models (native resolution >= 224), and the native
resolution for the small test backbones, where 448 would only cost CPU time.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np
from scipy import stats as sstats

from radprobe.errors import RadprobeError
from radprobe.features.cache import FeatureSet, FeatureSpec
from radprobe.features.extract import ExtractStats, forward_rate
from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import predictions_path
from radprobe.run.evaluate import EvalConfig, EvalSummary, _check_options, _device, _env, extract_all
from radprobe.segmentation.data import intensity, load_split, uniform_spacing
from radprobe.segmentation.heads import decoder_plan, linear_layer
from radprobe.segmentation.metrics import CaseTable, summarize
from radprobe.segmentation.output import slug
from radprobe.segmentation.protocols import (
    FROZEN,
    SEG_PROTOCOLS,
    UNET_NAME,
    SegData,
    SegResult,
    resolve_options,
)
from radprobe.utils import digest

DEFAULT_RESOLUTION = 448


def seg_resolution(backbone: str, requested: int | None) -> tuple[int, str]:
    """The square input resolution of a segmentation run, and why it was chosen."""
    from radprobe.backbones import backbone_stats
    from radprobe.backbones.registry import resolve_resolution

    st = backbone_stats(backbone)  # unknown names raise a one-line error here
    native, patch = int(st["native_resolution"] or 224), st["patch_size"]
    if requested is not None:
        return resolve_resolution(backbone, native, patch, requested), "--resolution"
    if native >= 224:
        r = DEFAULT_RESOLUTION if not patch else max(patch, round(DEFAULT_RESOLUTION / patch) * patch)
        return r, f"segmentation default {DEFAULT_RESOLUTION}"
    return resolve_resolution(backbone, native, patch, None), "native (small model)"


def grid_layers(num_blocks: int, is_vit: bool) -> list[int]:
    """Absolute layers whose grids are cached: every level either frozen head reads.

    Always the union, whichever heads a run asks for, so a later run of the other head (or another
    learning rate) finds the same cache entry instead of extracting again.
    """
    return sorted({linear_layer(num_blocks), *decoder_plan(num_blocks, is_vit)[0]})


def evaluate_segmentation(cfg: EvalConfig, warn: Any = None) -> EvalSummary:
    """Run the ``seg-*`` protocols of ``cfg``; one result row per (protocol, metric)."""
    from radprobe.backbones import create_backbone
    from radprobe.data import load_dataset

    # -- validate names, options, data and backbone; nothing is written to cfg.out yet
    unknown = [p for p in cfg.protocols if p not in SEG_PROTOCOLS]
    if unknown:
        raise RadprobeError(
            f"unknown segmentation protocol {unknown[0]!r}; expected one of: {', '.join(SEG_PROTOCOLS)}"
        )
    protocols = list(dict.fromkeys(cfg.protocols))
    runners = {p: SEG_PROTOCOLS[p] for p in protocols}
    _check_options(runners, cfg.options)
    if cfg.n_boot < 0:
        raise RadprobeError(f"--bootstrap {cfg.n_boot}: expected a non-negative number of resamples")
    if importlib.util.find_spec("monai") is None:
        raise RadprobeError(
            f"--protocol {protocols[0]}: segmentation needs MONAI (losses, U-Net, HD95); "
            "pip install 'monai>=1.3'"
        )
    device = _device(cfg.device)
    dataset = load_dataset(cfg.dataset)
    if dataset.task != "segmentation":
        raise RadprobeError(
            f"dataset {cfg.dataset} is a {dataset.task} dataset; segmentation protocols "
            f"({', '.join(protocols)}) "
            "need a segmentation dataset (images with masks)"
        )
    for s in ("train", "val", "test"):
        if not dataset.split(s):
            raise RadprobeError(f"dataset {cfg.dataset} has no {s!r} split")
    n_train = len(dataset.split("train"))
    opts = {p: resolve_options(p, runners[p], cfg.options.get(p, {}), n_train) for p in protocols}
    size, size_source = seg_resolution(cfg.backbone, cfg.resolution)
    frozen = [p for p in protocols if p in FROZEN]
    backbone = None
    if frozen:  # built before the (slower) pass over every mask, so weight problems surface first
        backbone = create_backbone(
            cfg.backbone,
            weights=cfg.weights,
            allow_partial_weights=cfg.allow_partial_weights,
            pretrained=cfg.pretrained,
            resolution=size,
        )
    splits = {
        s: load_split(dataset, s, size, keep_masks=s != "train", keep_images="seg-unet" in protocols)
        for s in ("train", "val", "test")
    }
    uniform_spacing(splits.values())
    feats: dict[str, FeatureSet] = {}
    ext: dict[str, ExtractStats] = {}
    if backbone is not None:
        info = backbone.info
        layers = grid_layers(max(1, info.num_blocks), info.patch_size is not None)
        feats, ext = _extract(cfg, backbone, dataset, layers, device, warn)
        for s, split in splits.items():
            if feats[s].sample_ids != split.row_ids():
                raise RuntimeError(f"cache entry {feats[s].path} holds other rows than split {s}")
            # memory-mapped: after the first epoch the OS page cache serves every head and lr
            split.features = {la: feats[s].grid(la) for la in layers}

    # -- run and write
    run_id = uuid.uuid4().hex[:12]
    # the weights digest keeps two checkpoints of one architecture (e.g. pretrained vs control) apart
    tag = slug(
        f"{backbone.info.name}-{backbone.info.weights_digest[:8]}" if backbone is not None else cfg.backbone
    )
    data = SegData(
        dataset=dataset,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        size=size,
        seed=cfg.seed,
        device=device,
        info=backbone.info if backbone is not None else None,
        out=cfg.out,
        tag=tag,
    )
    summary = EvalSummary(
        run_id=run_id,
        out=str(cfg.out),
        backbone=backbone.info.name if backbone is not None else cfg.backbone,
        dataset=dataset.name,
        cache_hit=bool(ext) and all(st.cache_hit for st in ext.values()),
        splits={
            s: {
                "n": len(splits[s]),
                "rows": splits[s].n_rows,
                **(
                    {"cache_key": feats[s].key, "path": str(feats[s].path), **asdict(ext[s])}
                    if s in feats
                    else {}
                ),
            }
            for s in splits
        },
    )
    common = {**common_hparams(dataset, splits["test"], size, size_source), "n_boot": cfg.n_boot}
    with ResultStore(cfg.out) as store:
        for name in protocols:
            t0 = time.perf_counter()
            result = runners[name](data, **opts[name])
            wall = time.perf_counter() - t0
            rows = _rows(cfg, run_id, data, backbone, feats, ext, result, common, wall)
            store.write(rows)
            summary.rows.extend(asdict(r) for r in rows)
    return summary


def common_hparams(dataset: Any, test: Any, size: int, size_source: str) -> dict[str, Any]:
    """What every segmentation row of a dataset records about its inputs, loss and HD95 unit."""
    common: dict[str, Any] = {
        "resolution": size,
        "resolution_source": size_source,
        "cases": "volume" if dataset.ndim == 3 else "image",
        "intensity": intensity(dataset),
        "hd95_unit": _hd95_unit(test),
        "loss": "monai DiceCELoss (softmax, batch)",
    }
    if dataset.ndim == 3:
        common["axis"] = dataset.records[0].image.axis
        common["slicewise"] = "2D per slice, reassembled per volume"
    return common


def _hd95_unit(split: Any) -> str:
    return "mm" if split.cases and all(c.spacing is not None for c in split.cases) else "px"


def _extract(
    cfg: EvalConfig, backbone: Any, dataset: Any, layers: list[int], device: str, warn: Any
) -> tuple[dict[str, FeatureSet], dict[str, ExtractStats]]:
    # float16 halves the cache of patch grids (DINOv2-L at 448: 4 MB per image and layer in float32)
    spec = FeatureSpec(n_blocks=1, grid_layers=tuple(layers), dtype="float16")
    return extract_all(cfg, backbone, dataset, spec, device, warn, per_slice=True, label=" grids")


def _t_interval(vals: list[float]) -> tuple[float | None, float | None]:
    v = np.asarray([x for x in vals if np.isfinite(x)])
    if len(v) < 2:
        return None, None
    half = float(sstats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)


def _rows(
    cfg: EvalConfig,
    run_id: str,
    data: SegData,
    backbone: Any,
    feats: dict[str, FeatureSet],
    ext: dict[str, ExtractStats],
    result: SegResult,
    common: dict[str, Any],
    wall: float,
) -> list[ResultRow]:
    dataset = data.dataset
    frozen = result.protocol in FROZEN
    classes = list(dataset.classes)
    groups = data.test.patients()
    unit = common["hd95_unit"]
    if frozen:
        info = backbone.info
        name, weights, params = info.name, info.weights_digest, info.params
        model_key: dict[str, Any] = {"preprocess": backbone.preprocess.to_dict()}
        meta = [f.meta.get("stats") or {} for f in feats.values()]
        extract_s = float(sum(m.get("wall_time_s", 0.0) for m in meta))
        ext_ips = forward_rate(meta)
        ext_mem = max([s.peak_mem_mb for s in ext.values()] + [m.get("peak_mem_mb", 0.0) for m in meta])
        keys = [feats[s].key for s in ("train", "val", "test")]
    else:
        name, weights, params = UNET_NAME, f"random-init:seed{cfg.seed}", result.trainable_params
        model_key = {"resolution": data.size}
        extract_s, ext_ips, ext_mem, keys = 0.0, 0.0, 0.0, []
    train_ips = float(np.mean([f.stats.imgs_per_s for f in result.fits]))
    base = {
        "run_id": run_id,
        "backbone": name,
        "weights_digest": weights,
        "dataset": dataset.name,
        "task": "segmentation",
        "num_classes": len(classes),
        "resolution": int(data.size),
        "manifest_digest": dataset.manifest_digest(),
        "split_digest": dataset.split_digest("test"),
        "seed": cfg.seed,
        "n": len(data.test),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "params": int(params),
        "trainable_params": int(result.trainable_params),
        "wall_time_s": wall,
        "extract_time_s": extract_s,
        # frozen heads: extraction throughput, as for classification; the U-Net: training throughput
        "imgs_per_s": ext_ips if frozen else train_ips,
        "peak_mem_mb": max([ext_mem] + [f.stats.peak_mem_mb for f in result.fits]),
        "feature_keys": keys,
        "env": _env(data.device, feats.values() if frozen else ()),
    }
    key_base = {
        "backbone": name,
        "weights": weights,
        **model_key,
        "dataset": dataset.manifest_digest(),
        "splits": [dataset.split_digest(s) for s in ("train", "val", "test")],
        "seed": cfg.seed,
        "protocol": result.protocol,
    }
    hparams_base = {**result.hparams, **common}
    rows: list[ResultRow] = []
    by_shots: dict[int | None, list[Any]] = {}
    for f in result.fits:
        by_shots.setdefault(f.shots, []).append(f)
    for shots, fits in by_shots.items():
        hparams = dict(hparams_base) if shots is None else {**hparams_base, "shots": shots}
        eval_key = digest({**key_base, "hparams": hparams}, 24)
        if len(fits) == 1:
            metrics, warns = summarize(
                fits[0].scores, classes, groups, n_boot=cfg.n_boot, seed=cfg.seed, unit=unit
            )
            ids = [c.sample_id for c in data.test.cases]
            CaseTable.of(fits[0].scores, ids, groups, classes).save(predictions_path(cfg.out, eval_key))
            ci_method = f"patient bootstrap x{cfg.n_boot}, percentile 95%" if cfg.n_boot else ""
            selected = dict(fits[0].selected)
            values = {m.name: (m.value, m.ci_low, m.ci_high) for m in metrics}
            per_draw: dict[str, list[float]] = {}
        else:
            draws, warns = [], []
            for f in fits:
                ms, w = summarize(f.scores, classes, groups, n_boot=0, seed=cfg.seed, unit=unit)
                draws.append({m.name: m.value for m in ms})
                warns += [f"{shots}-shot draw {f.draw}: {x}" for x in w]
            per_draw = {m: [d[m] for d in draws] for m in draws[0]}
            values = {}
            for m, vals in per_draw.items():
                finite = [v for v in vals if np.isfinite(v)]
                values[m] = (float(np.mean(finite)) if finite else float("nan"), *_t_interval(vals))
            ci_method = f"t-interval over {len(fits)} draws"
            selected = {"per_draw": [f.selected for f in fits], "lr": [f.selected["lr"] for f in fits]}
        for metric, (value, lo, hi) in values.items():
            sel = dict(selected)
            if per_draw:
                vals = per_draw[metric]
                sel.update(values=vals, sd=float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0)
            rows.append(
                ResultRow(
                    **base,
                    n_train=int(fits[0].train_cases),
                    eval_key=eval_key,
                    protocol=result.protocol,
                    metric=metric,
                    value=value,
                    ci_low=lo,
                    ci_high=hi,
                    ci_method=ci_method if lo is not None else "",
                    hparams=hparams,
                    selected=sel,
                    warnings=sorted(set(result.warnings + warns)),
                )
            )
    return rows
