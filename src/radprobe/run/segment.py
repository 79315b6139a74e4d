"""The segmentation family: dataset → masks → backbone → per-slice grid cache → heads → rows.

:func:`validate` checks every protocol name, option and
value, the dataset's task, every mask (shape and labels) and the backbone are checked before anything
is written to ``cfg.out``; the feature cache is the only thing written earlier. One extraction
(all layers any requested head reads, float16, one row per image or slice) serves every head and
learning rate. Rows: one per (protocol[, shots], metric), see :mod:`radprobe.metrics.segmentation`.

Input resolution: ``--resolution`` when given; otherwise 448 (the paper's segmentation resolution,
snapped to the patch size) for real foundation models (native resolution >= 224), and the native
resolution for the small test backbones, where 448 would only cost CPU time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sstats

from radprobe.core.runtime import env_info, resolve_device
from radprobe.errors import OptionError, RadprobeError
from radprobe.features.cache import FeatureSet, FeatureSpec
from radprobe.features.extract import ExtractStats, forward_rate
from radprobe.features.image_source import decoded_split
from radprobe.features.images import PIXELS, ImageCache
from radprobe.metrics.segmentation import summarize
from radprobe.protocols import registry
from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import predictions_path
from radprobe.results.rows import Subject, base_row, ci_method, eval_key
from radprobe.run.config import EvalConfig, EvalSummary, check_n_boot, image_cache
from radprobe.run.frozen import extract_all
from radprobe.run.scoring import score_cases
from radprobe.segmentation.data import SegSplit, at_input, intensity, load_split, uniform_spacing
from radprobe.segmentation.heads import decoder_plan, linear_layer
from radprobe.segmentation.online import Pixels
from radprobe.segmentation.output import slug
from radprobe.segmentation.protocols import SCRATCH_MODELS, SegData, SegResult
from radprobe.segmentation.score_options import check_spacing, split_scoring
from radprobe.segmentation.updecoder import updecoder_layers

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


def grid_layers(num_blocks: int, is_vit: bool, updecoder: bool = False) -> list[int]:
    """Absolute layers whose grids are cached: every level seg-linear and seg-decoder read.

    Always their union, whichever heads a run asks for, so a later run of the other head (or another
    learning rate) finds the same cache entry instead of extracting again. ``updecoder`` (a run with
    seg-updecoder) adds the last five blocks; only then, as they would double most caches.
    """
    extra = updecoder_layers(num_blocks) if updecoder else []
    return sorted({linear_layer(num_blocks), *decoder_plan(num_blocks, is_vit)[0], *extra})


@dataclass
class SegPlan:
    """A validated segmentation evaluation: every mask read, the backbone built, nothing extracted."""

    cfg: EvalConfig
    dataset: Any
    protocols: list[str]
    options: dict[str, dict[str, Any]]
    size: int
    size_source: str
    device: str
    backbone: Any  # None when only protocols trained from scratch run
    splits: dict[str, SegSplit]


def validate(cfg: EvalConfig, dataset: Any = None) -> SegPlan:
    """Check the ``seg-*`` protocols of ``cfg`` against the dataset, its masks and the backbone;
    raises :class:`RadprobeError` and writes nothing (the feature cache included)."""
    from radprobe.backbones import create_backbone
    from radprobe.data import load_dataset

    protocols = list(dict.fromkeys(cfg.protocols))
    for p in protocols:
        if registry.get(p).family != "segmentation":
            raise OptionError(
                "--protocol",
                f"{p}: not a segmentation protocol ({', '.join(registry.names('segmentation'))})",
                setting="protocols",
            )
    check_n_boot(cfg.n_boot)
    if importlib.util.find_spec("monai") is None:
        raise OptionError(
            "--protocol",
            f"{protocols[0]}: segmentation needs MONAI (losses, U-Net, HD95); pip install 'monai>=1.3'",
            setting="protocols",
        )
    device = resolve_device(cfg.device)
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset)
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
    opts = {p: registry.check_options(p, cfg.options.get(p, {}), n_train=n_train) for p in protocols}
    size, size_source = seg_resolution(cfg.backbone, cfg.resolution)
    backbone = None
    if any(registry.get(p).consumes == "patch grids" for p in protocols):
        # built before the (slower) pass over every mask, so weight problems surface first
        backbone = create_backbone(
            cfg.backbone,
            weights=cfg.weights,
            allow_partial_weights=cfg.allow_partial_weights,
            pretrained=cfg.pretrained,
            resolution=size,
        )
        if "seg-updecoder" in protocols and backbone.info.patch_size is None:
            raise OptionError(
                "--protocol",
                f"seg-updecoder: reads five ViT blocks' patch grids; {cfg.backbone} is a CNN",
                setting="protocols",
            )
    scratch = [p for p in protocols if registry.get(p).consumes == "images"]
    released = _released_resize(scratch, opts)
    splits = {
        s: load_split(
            dataset, s, size, keep_masks=s != "train", keep_images=bool(scratch), released_resize=released
        )
        for s in ("train", "val", "test")
    }
    uniform_spacing(splits.values())
    check_spacing(opts, (c for s in splits.values() for c in s.cases))
    return SegPlan(cfg, dataset, protocols, opts, size, size_source, device, backbone, splits)


def _released_resize(scratch: list[str], opts: dict[str, dict[str, Any]]) -> bool:
    """Whether the image-trained protocols read images resized as the paper's notebooks did (all of
    them ``preset=paper``); one line when a run mixes the two, whose inputs would differ."""
    paper = [p for p in scratch if opts[p].get("preset") == "paper"]
    if paper and len(paper) < len(scratch):
        other = next(p for p in scratch if p not in paper)
        raise OptionError(
            "--set",
            f"{paper[0]}.preset='paper' resizes the images as released, {other} without the preset as "
            "radprobe does; run them separately",
        )
    return bool(paper)


def run(plan: SegPlan, store: ResultStore, run_id: str, warn: Any = None) -> EvalSummary:
    """Extract the patch grids (or find them cached), run each protocol and write its rows."""
    cfg, dataset, backbone, splits = plan.cfg, plan.dataset, plan.backbone, plan.splits
    feats: dict[str, FeatureSet] = {}
    ext: dict[str, ExtractStats] = {}
    if backbone is not None:
        info = backbone.info
        layers = grid_layers(
            max(1, info.num_blocks), info.patch_size is not None, "seg-updecoder" in plan.protocols
        )
        feats, ext = _extract(cfg, backbone, dataset, layers, plan.device, warn)
        for s, split in splits.items():
            if feats[s].sample_ids != split.row_ids():
                raise RuntimeError(f"cache entry {feats[s].path} holds other rows than split {s}")
            # memory-mapped: after the first epoch the OS page cache serves every head and lr
            split.features = {la: feats[s].grid(la) for la in layers}
    with contextlib.ExitStack() as stack:
        pixels = _pixels(plan, stack) if backbone is not None else {}
        return _run_heads(plan, store, run_id, feats, ext, pixels)


def _run_heads(
    plan: SegPlan,
    store: ResultStore,
    run_id: str,
    feats: dict[str, FeatureSet],
    ext: dict[str, ExtractStats],
    pixels: dict[str, Pixels],
) -> EvalSummary:
    """Each protocol on the extracted grids (and, for ``augment="images"``, the resized images)."""
    cfg, dataset, backbone, splits = plan.cfg, plan.dataset, plan.backbone, plan.splits
    # the weights digest keeps two checkpoints of one architecture (e.g. pretrained vs control) apart
    tag = slug(
        f"{backbone.info.name}-{backbone.info.weights_digest[:8]}" if backbone is not None else cfg.backbone
    )
    data = SegData(
        dataset=dataset,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        size=plan.size,
        seed=cfg.seed,
        device=plan.device,
        info=backbone.info if backbone is not None else None,
        out=cfg.out,
        tag=tag,
        backbone=backbone,
        pixels=pixels,
    )
    summary = EvalSummary(
        run_id=run_id,
        out=str(cfg.out),
        backbone=backbone.info.name if backbone is not None else cfg.backbone,
        dataset=dataset.name,
        cache_hit=bool(ext) and all(st.cache_hit for st in ext.values()),
        splits={s: _split_summary(splits[s], feats.get(s), ext.get(s)) for s in splits},
    )
    common = {**common_hparams(dataset, splits["test"], plan.size, plan.size_source), "n_boot": cfg.n_boot}
    for name in plan.protocols:
        t0 = time.perf_counter()
        own, scoring = split_scoring(plan.options[name])
        scored = replace(data, nsd_tolerance_mm=scoring.get("nsd_tolerance_mm"))
        shared = common
        if scoring.get("score_at") == "input":  # val (selection) and test at the input resolution
            scored = replace(scored, val=at_input(data.val), test=at_input(data.test))
            # hd95_unit stands: at_input scales the spacings it keeps and keeps the unknown ones unknown
            shared = {**common, "scored_at": f"input resolution {plan.size} px, masks resized nearest-exact"}
        result = registry.get(name).runner(scored, **own)  # type: ignore[misc]
        wall = time.perf_counter() - t0
        rows = _rows(cfg, run_id, scored, backbone, feats, ext, result, shared, wall)
        store.write(rows)
        summary.rows.extend(asdict(r) for r in rows)
    return summary


def _pixels(plan: SegPlan, stack: contextlib.ExitStack) -> dict[str, Pixels]:
    """The training and validation rows resized to the input size before min-max, for heads that
    train on augmented images (``augment="images"``); none otherwise. They come from the
    decoded-image cache (one entry per split and geometry, shared by every backbone of the size), or,
    with it turned off, from a temporary one removed after the run."""
    if not any(plan.options[p].get("augment") == "images" for p in plan.protocols):
        return {}
    cfg, dataset = plan.cfg, plan.dataset
    cache = image_cache(cfg) or ImageCache(
        Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="radprobe-px-")))
    )
    geometry = replace(plan.backbone.preprocess, minmax=False)  # min-max comes after the rotation
    out: dict[str, Pixels] = {}
    for name in ("train", "val"):
        split = plan.splits[name]
        depths = [c.rows.stop - c.rows.start for c in split.cases] if dataset.ndim == 3 else None
        entry = decoded_split(cache, dataset, name, geometry, cfg.num_workers or 0, depths)
        if entry is None or entry.sample_ids != split.row_ids():
            raise RadprobeError(
                f"dataset {dataset.name}: the {name} images could not be held at one channel count "
                "(colour and grayscale mixed); augment='none' or 'grids' trains without them"
            )
        out[name] = Pixels(entry.arrays[PIXELS], str(entry.meta["storage"]), entry.sample_ids)
    return out


def _split_summary(split: SegSplit, fs: FeatureSet | None, st: ExtractStats | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(split), "rows": split.n_rows}
    if fs is not None and st is not None:
        out.update(cache_key=fs.key, path=str(fs.path), **asdict(st))
    return out


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
    frozen = registry.get(result.protocol).consumes == "patch grids"
    if frozen:
        info = backbone.info
        subject = Subject(
            info.name, info.weights_digest, dataset, cfg.seed, {"preprocess": backbone.preprocess.to_dict()}
        )
        params = info.params
        meta = [f.meta.get("stats") or {} for f in feats.values()]
        extract_s = float(sum(m.get("wall_time_s", 0.0) for m in meta))
        ext_ips = forward_rate(meta)
        ext_mem = max([s.peak_mem_mb for s in ext.values()] + [m.get("peak_mem_mb", 0.0) for m in meta])
        keys = [feats[s].key for s in ("train", "val", "test")]
    else:
        name = SCRATCH_MODELS[result.protocol][0]
        subject = Subject(name, f"random-init:seed{cfg.seed}", dataset, cfg.seed, {"resolution": data.size})
        params = result.trainable_params
        extract_s, ext_ips, ext_mem, keys = 0.0, 0.0, 0.0, []
    train_ips = float(np.mean([f.stats.imgs_per_s for f in result.fits]))
    base = base_row(
        subject,
        run_id,
        resolution=int(data.size),
        n=len(data.test),
        n_val=len(data.val),
        n_test=len(data.test),
        params=int(params),
        trainable_params=int(result.trainable_params),
        wall_time_s=wall,
        extract_time_s=extract_s,
        # frozen heads: extraction throughput, as for classification; the U-Net: training throughput
        imgs_per_s=ext_ips if frozen else train_ips,
        peak_mem_mb=max([ext_mem] + [f.stats.peak_mem_mb for f in result.fits]),
        feature_keys=keys,
        env=env_info(
            data.device,
            feature_precisions=(f.precision for f in feats.values()) if frozen else (),
        ),
    )
    by_shots: dict[int | None, list[Any]] = {}
    for f in result.fits:
        by_shots.setdefault(f.shots, []).append(f)
    rows: list[ResultRow] = []
    for shots, fits in by_shots.items():
        hparams = {**result.hparams, **common}
        if "loss" in result.hparams:  # a preset's own loss (the paper's Dice) over the common one
            hparams["loss"] = result.hparams["loss"]
        if shots is not None:
            hparams["shots"] = shots
        rows += _shot_rows(cfg, data, subject, base, result, shots, fits, hparams)
    return rows


def _shot_rows(
    cfg: EvalConfig,
    data: SegData,
    subject: Subject,
    base: dict[str, Any],
    result: SegResult,
    shots: int | None,
    fits: list[Any],
    hparams: dict[str, Any],
) -> list[ResultRow]:
    """The rows of one training size: a patient bootstrap of one fit, or a t-interval over draws."""
    classes, groups, unit = list(data.dataset.classes), data.test.patients(), hparams["hd95_unit"]
    key = eval_key(subject, result.protocol, hparams)
    per_draw: dict[str, list[float]] = {}
    if len(fits) == 1:
        ids = [c.sample_id for c in data.test.cases]
        metrics, warns = score_cases(
            fits[0].scores,
            classes,
            groups,
            ids,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            unit=unit,
            path=predictions_path(cfg.out, key),
        )
        method = ci_method(cfg.n_boot)
        selected = dict(fits[0].selected)
        values = {m.name: (m.value, m.ci_low, m.ci_high) for m in metrics}
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
        method = f"t-interval over {len(fits)} draws"
        selected = {"per_draw": [f.selected for f in fits], "lr": [f.selected["lr"] for f in fits]}
    rows = []
    for metric, (value, lo, hi) in values.items():
        sel = dict(selected)
        if per_draw:
            vals = per_draw[metric]
            sel.update(values=vals, sd=float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0)
        rows.append(
            ResultRow(
                **base,
                n_train=int(fits[0].train_cases),
                eval_key=key,
                protocol=result.protocol,
                metric=metric,
                value=value,
                ci_low=lo,
                ci_high=hi,
                ci_method=method if lo is not None else "",
                hparams=hparams,
                selected=sel,
                warnings=sorted(set(result.warnings + warns)),
            )
        )
    return rows
