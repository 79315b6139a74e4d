"""The frozen family: features extracted (or found in the cache) once, then knn, linear, logreg,
fewshot and mil run on them; each protocol's test scores become rows with patient-bootstrap CIs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.config import cache_dir
from radprobe.core.runtime import env_info, resolve_device, threads_for
from radprobe.errors import OptionError, RadprobeError
from radprobe.features.cache import FeatureCache, FeatureSet, FeatureSpec
from radprobe.features.extract import (
    VOLUME_POOLS,
    ExtractStats,
    extract_split,
    extraction_paths,
    forward_rate,
    pool_volumes,
    volume_offsets,
)
from radprobe.features.views import view_family
from radprobe.progress import make_progress
from radprobe.protocols import registry
from radprobe.protocols.base import Bags, ProtocolInput, SplitFeatures
from radprobe.results import ResultRow
from radprobe.results.predictions import predictions_path
from radprobe.results.rows import Scored, Subject, base_row, eval_key, metric_rows
from radprobe.run.config import EvalConfig, EvalSummary, check_n_boot, image_cache
from radprobe.run.scoring import score_classification
from radprobe.utils import digest

VIEW_SPLITS = ("train", "val")  # heads train (and refit) on views; they are chosen and tested on images


@dataclass
class Prepared:
    """One backbone on one dataset with every split's features at hand.

    For 3D datasets ``feats`` are per-slice entries: protocols get one row per volume, pooled with
    ``volume_pool`` (mean or max), plus each volume's slice features as bags (MIL).
    """

    dataset: Any
    backbone: Any
    device: str
    feats: dict[str, FeatureSet]
    stats: dict[str, ExtractStats]
    volume_pool: str = "mean"
    cfg: EvalConfig | None = None  # how to extract more (augmented views), when asked
    spec: FeatureSpec | None = None
    warn: Any = None
    _pooled: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    # augmented views of the training and validation images: split -> one entry per view
    _views: dict[str, list[FeatureSet]] = field(default_factory=dict, repr=False)
    # features under other preprocessing (the paper's kNN centre crop), by its digest
    _other: dict[str, tuple[dict[str, FeatureSet], dict[str, ExtractStats]]] = field(
        default_factory=dict, repr=False
    )

    def features_for(self, preprocess: Any) -> dict[str, FeatureSet]:
        """Every split's features under ``preprocess``: the backbone's own, or extracted (or found
        in the cache) under another, e.g. centre-cropped for the paper's kNN."""
        if preprocess == self.backbone.preprocess:
            return self.feats
        key = digest(preprocess.to_dict())
        if key not in self._other:
            if self.cfg is None or self.spec is None:
                raise RuntimeError("these features were prepared without a way to extract others")
            self._other[key] = extract_all(
                self.cfg,
                self.backbone.with_preprocess(preprocess),
                self.dataset,
                self.spec,
                self.device,
                self.warn,
                per_slice=self.volumes,
                label=" · centre crop" if preprocess.crop_from else " · other view",
            )
        return self._other[key][0]

    def ensure_views(self, n: int) -> None:
        """Extract (or find cached) ``n`` augmented views of every train and val image."""
        have = len(self._views.get("train", []))
        if n <= have:
            return
        if self.cfg is None or self.spec is None:
            raise RuntimeError("these features were prepared without a way to extract augmented views")
        for v in view_family(n)[have:]:
            spec = replace(self.spec, view=v)
            label = f" · view {v.index + 1}/{n}"
            feats, _ = extract_all(
                self.cfg,
                self.backbone,
                self.dataset,
                spec,
                self.device,
                self.warn,
                splits=VIEW_SPLITS,
                label=label,
            )
            for split, fs in feats.items():
                self._views.setdefault(split, []).append(fs)

    @property
    def volumes(self) -> bool:
        return self.dataset.ndim == 3

    @property
    def cache_hit(self) -> bool:
        return all(s.cache_hit for s in self.stats.values())

    def split_summary(self) -> dict[str, dict[str, Any]]:
        def n(f: FeatureSet) -> dict[str, int]:
            return {"n": len(volume_offsets(f)) - 1, "n_slices": len(f)} if self.volumes else {"n": len(f)}

        return {
            s: {**n(f), "cache_key": f.key, "path": str(f.path), **asdict(self.stats[s])}
            for s, f in self.feats.items()
        }

    def _split(self, split: str, pool: str, feats: dict[str, FeatureSet]) -> SplitFeatures:
        ds, fs = self.dataset, feats[split]
        labels, groups = ds.labels(ds.split(split)), ds.patients(ds.split(split))
        if not self.volumes:
            views = [_view_blocks(v) for v in self._views[split]] if split in self._views else None
            return SplitFeatures(np.asarray(fs.cls), labels, groups, blocks=fs.blocks, views=views)
        if (fs.key, pool) not in self._pooled:  # a study runs many jobs on one Prepared
            self._pooled[fs.key, pool] = pool_volumes(fs, pool)
        pooled = self._pooled[fs.key, pool]
        bags = Bags(fs.cls, volume_offsets(fs))
        return SplitFeatures(pooled["cls"], labels, groups, blocks=pooled.get("blocks"), bags=bags)

    def protocol_input(
        self, seed: int, volume_pool: str | None = None, preprocess: Any = None, n_boot: int = 1000
    ) -> ProtocolInput:
        """Features of every split; ``volume_pool`` (default: this Prepared's) pools 3D volumes;
        ``preprocess`` (default: the backbone's) says which features."""
        pool = volume_pool or self.volume_pool
        feats = self.features_for(preprocess or self.backbone.preprocess)
        if pool not in VOLUME_POOLS:
            raise OptionError(
                "--volume-pool", f"{pool!r}: expected one of {', '.join(VOLUME_POOLS)}", setting="volume_pool"
            )
        splits = {s: self._split(s, pool, feats) for s in ("train", "val", "test")}
        ds = self.dataset
        return ProtocolInput(
            splits["train"], splits["val"], splits["test"], ds.task, len(ds.classes), seed, n_boot
        )


def _view_blocks(fs: FeatureSet) -> np.ndarray:
    """A view entry's linear-probe input: its blocks, or (CNNs without blocks) the class token."""
    if fs.blocks is not None:
        return fs.blocks
    f = np.asarray(fs.cls)
    return np.stack([f, f], axis=1)[:, None]


def _check_views(name: str, options: dict[str, Any], dataset: Any) -> int:
    """The augmented views protocol ``name`` reads; one line when the dataset cannot give them."""
    n = registry.views_needed(name, options)
    if n and dataset.ndim == 3:
        raise OptionError(
            "--set",
            f"{name}.train_views={n}: augmented views are drawn on 2D images; {dataset.name} is 3D "
            f"(set {name}.train_views=0)",
        )
    return n


def extract_all(
    cfg: EvalConfig,
    backbone: Any,
    dataset: Any,
    spec: FeatureSpec,
    device: str,
    warn: Any = None,
    *,
    per_slice: bool = False,
    label: str = "",
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> tuple[dict[str, FeatureSet], dict[str, ExtractStats]]:
    """Features of ``splits`` from the cache or one extraction each, with progress bars.

    ``warn`` receives one-line notices (e.g. a corrupt cache entry being rebuilt).
    """
    root = cfg.cache_root or cache_dir()
    cache = FeatureCache(root / "features")
    images = image_cache(cfg)
    feats: dict[str, FeatureSet] = {}
    stats: dict[str, ExtractStats] = {}
    name = backbone.info.name
    with make_progress(cfg.progress) as bar:
        for split in splits:
            n = len(dataset.split(split))
            task = bar.add_task(f"{name} · {split}{label}", total=n)
            fs, st = extract_split(
                backbone,
                dataset,
                split,
                cache,
                spec,
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
                device=device,
                progress=lambda k, task=task: bar.advance(task, k),
                per_slice=per_slice,
                images=images,
            )
            reused = st.extra.get("reused_rows", 0)
            suffix = " (cached)" if st.cache_hit else f" ({reused} rows reused)" if reused else ""
            bar.update(task, completed=n, description=f"{name} · {split}{label}{suffix}")
            # each discarded entry once, named with its split
            problems = cache.take_problems() + (images.take_problems() if images is not None else [])
            if problems:
                st.extra["rebuilt"] = problems[0] if len(problems) == 1 else problems
                for line in problems if warn is not None else ():
                    warn(line)
            feats[split], stats[split] = fs, st
    return feats, stats


def prepare(cfg: EvalConfig, warn: Any = None, dataset: Any = None) -> Prepared:
    """Validate the inputs, load dataset and backbone, and extract (or find cached) features.

    Nothing is written outside the feature cache. ``warn`` receives one-line notices (e.g. a
    corrupt cache entry being rebuilt); ``dataset``: the loaded ``cfg.dataset``, if at hand.
    """
    from radprobe.backbones import create_backbone
    from radprobe.data import load_dataset

    check_n_boot(cfg.n_boot)
    if cfg.volume_pool not in VOLUME_POOLS:
        raise OptionError(
            "--volume-pool",
            f"{cfg.volume_pool!r}: expected one of {', '.join(VOLUME_POOLS)}",
            setting="volume_pool",
        )
    device = resolve_device(cfg.device)
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset)
    if dataset.task not in registry.CLASSIFICATION:
        raise RadprobeError(
            f"dataset {cfg.dataset} is a {dataset.task} dataset; these protocols need a classification "
            f"dataset ({', '.join(registry.CLASSIFICATION)})"
        )
    for p in cfg.protocols:
        registry.check_fit(p, cfg.dataset, dataset.task, dataset.ndim)
    n_views = max([_check_views(p, cfg.options.get(p, {}), dataset) for p in cfg.protocols], default=0)
    if dataset.ndim != 3 and cfg.volume_pool != "mean":
        raise OptionError(
            "--volume-pool",
            f"{cfg.volume_pool}: applies to 3D datasets only; {cfg.dataset} is {dataset.ndim}D",
            setting="volume_pool",
        )
    for s in ("train", "val", "test"):
        if not dataset.split(s):
            raise RadprobeError(f"dataset {cfg.dataset} has no {s!r} split")
    backbone = create_backbone(
        cfg.backbone,
        weights=cfg.weights,
        allow_partial_weights=cfg.allow_partial_weights,
        pretrained=cfg.pretrained,
        resolution=cfg.resolution,
    )
    # a backbone shallower than n_blocks (test models, CNNs) gives all the blocks it has
    spec = FeatureSpec(n_blocks=min(cfg.n_blocks, max(1, backbone.info.num_blocks)))
    # volumes are cached slice by slice, so one extraction serves every pooling and MIL
    volumes = dataset.ndim == 3
    feats, stats = extract_all(cfg, backbone, dataset, spec, device, warn, per_slice=volumes)
    for split, fs in feats.items():
        ids = fs.meta.get("volumes") if volumes else fs.sample_ids
        if ids != [r.sample_id for r in dataset.split(split)]:
            raise RuntimeError(f"cache entry {fs.path} holds other samples than split {split}")
    prep = Prepared(dataset, backbone, device, feats, stats, cfg.volume_pool, cfg, spec, warn)
    prep.ensure_views(n_views)
    for p in cfg.protocols:  # features under other preprocessing, before any protocol runs
        prep.features_for(registry.eval_preprocess(p, cfg.options.get(p, {}), backbone.preprocess))
    return prep


def extract(cfg: EvalConfig, warn: Any = None) -> EvalSummary:
    """Extract (or find cached) features of every split, writing nothing else."""
    prep = prepare(cfg, warn)
    return EvalSummary(
        run_id="",
        out="",
        backbone=prep.backbone.info.name,
        dataset=prep.dataset.name,
        cache_hit=prep.cache_hit,
        splits=prep.split_summary(),
    )


def _subject(prep: Prepared, seed: int, preprocess: Any) -> Subject:
    info = prep.backbone.info
    return Subject(info.name, info.weights_digest, prep.dataset, seed, {"preprocess": preprocess.to_dict()})


def _compute(prep: Prepared, data: ProtocolInput, wall: float, preprocess: Any) -> dict[str, Any]:
    """Counts and compute of a frozen row: extraction cost read from the cache entries' stats."""
    feats = prep.features_for(preprocess)
    meta_stats = [f.meta.get("stats") or {} for f in feats.values()]
    return {
        "n": len(data.test),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "resolution": preprocess.resolution,
        "params": prep.backbone.info.params,
        "wall_time_s": wall,
        "extract_time_s": float(sum(m.get("wall_time_s", 0.0) for m in meta_stats)),
        "imgs_per_s": forward_rate(meta_stats),
        "peak_mem_mb": max(
            [s.peak_mem_mb for s in prep.stats.values()] + [m.get("peak_mem_mb", 0.0) for m in meta_stats]
        ),
        "feature_keys": [feats[s].key for s in ("train", "val", "test")],
        "env": {
            **env_info(prep.device, feature_precisions=(f.precision for f in feats.values())),
            "extraction": extraction_paths(meta_stats),
        },
    }


def run_protocol(
    prep: Prepared,
    name: str,
    options: dict[str, Any],
    seed: int,
    n_boot: int,
    run_id: str,
    out: Path,
    volume_pool: str | None = None,
) -> list[ResultRow]:
    """Run one protocol on prepared features; returns its result rows (and saves test predictions).

    ``volume_pool`` (default: the Prepared's) pools 3D volumes for the protocols that read pooled rows.
    """
    runner = registry.get_protocol(name)
    options = registry.check_options(name, options)
    registry.check_fit(name, prep.dataset.name, prep.dataset.task, prep.dataset.ndim)
    prep.ensure_views(_check_views(name, options, prep.dataset))
    preprocess = registry.eval_preprocess(name, options, prep.backbone.preprocess)
    bags_only = registry.get(name).consumes == "slice bags"
    pool = volume_pool or prep.volume_pool
    data = prep.protocol_input(seed, pool, preprocess, n_boot)
    t0 = time.perf_counter()
    try:
        bags = data.train.bags if bags_only else None
        with threads_for(np.asarray(data.train.features if bags is None else bags.features).size):
            result = runner(data, **options)
    except (TypeError, ValueError) as e:
        if options:
            raise OptionError("--set", f"{name}.…: {e}") from None
        raise
    wall = time.perf_counter() - t0
    if prep.volumes and not bags_only:
        # the pooling is part of what was evaluated: mean and max rows get their own keys
        result.hparams = {**result.hparams, "volume_pool": pool}
        for sm in result.summaries:
            sm.hparams = {**sm.hparams, "volume_pool": pool}
    subject = _subject(prep, seed, preprocess)
    base = base_row(subject, run_id, **_compute(prep, data, wall, preprocess))
    trainable = {"trainable_params": int(result.selected.get("trainable_params", 0))}
    if result.summaries:
        return [
            row
            for sm in result.summaries
            for row in metric_rows(
                base,
                eval_key(subject, sm.protocol, sm.hparams),
                sm.protocol,
                [Scored(sm.metric, sm.value, sm.ci_low, sm.ci_high, sm.ci_method, sm.warnings)],
                sm.hparams,
                sm.selected,
                result.warnings,
                trainable_params=int(sm.selected.get("trainable_params", 0)),
            )
        ]
    if result.scores is None:
        raise RuntimeError(f"protocol {name} returned neither scores nor summaries")
    ds = prep.dataset
    key = eval_key(subject, name, result.hparams, n_boot)
    scored = score_classification(
        data.test.labels,
        result.scores,
        ds.task,
        data.test.groups,
        [r.sample_id for r in ds.split("test")],
        n_boot=n_boot,
        seed=seed,
        path=predictions_path(out, key),
        class_names=ds.classes,
    )
    return metric_rows(base, key, name, scored, result.hparams, result.selected, result.warnings, **trainable)
