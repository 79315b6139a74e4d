"""The path every evaluation takes: dataset → backbone → cache → protocol → metrics → store."""

from __future__ import annotations

import platform
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import radprobe
from radprobe.config import cache_dir
from radprobe.errors import RadprobeError
from radprobe.features.cache import FeatureCache, FeatureSet, FeatureSpec
from radprobe.features.extract import (
    VOLUME_POOLS,
    ExtractStats,
    extract_split,
    forward_rate,
    pool_volumes,
    volume_offsets,
)
from radprobe.metrics import bootstrap_metrics
from radprobe.progress import make_progress
from radprobe.protocols import ProtocolInput, get_protocol
from radprobe.protocols.base import Bags, SplitFeatures
from radprobe.protocols.registry import VOLUME_PROTOCOLS, check_options
from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import Predictions, predictions_path
from radprobe.utils import digest, load_yaml

CLASSIFICATION_TASKS = ("binary", "multiclass", "multilabel")


@dataclass
class EvalConfig:
    """One backbone on one dataset under one or more protocols."""

    backbone: str
    dataset: str
    protocols: list[str]
    out: Path
    weights: str | None = None
    allow_partial_weights: bool = False
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    n_boot: int = 1000
    n_blocks: int = 4
    cache_root: Path | None = None
    progress: bool = True
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # protocol -> keyword overrides
    volume_pool: str = "mean"  # 3D classification: how slice features become one row per volume
    pretrained: bool = True  # False: the architecture's seeded random init (a control)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["linear.epochs=20", "knn.ks=[10,20]"]`` → ``{"linear": {"epochs": 20}, "knn": {"ks": [10, 20]}}``.

    Values are parsed as YAML scalars or lists; a bare comma list ``10,20`` becomes a list too.
    """
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        proto, dot, name = key.partition(".")
        if not sep or not dot or not proto or not name:
            raise RadprobeError(f"--set {item!r}: expected PROTOCOL.KEY=VALUE, e.g. linear.epochs=20")
        text = f"[{raw}]" if "," in raw and not raw.lstrip().startswith("[") else raw
        try:
            value = load_yaml(text)
        except yaml.YAMLError:
            raise RadprobeError(f"--set {item!r}: cannot parse value {raw!r}") from None
        out.setdefault(proto, {})[name] = value
    return out


def _check_options(runners: dict[str, Any], options: dict[str, dict[str, Any]]) -> None:
    import inspect

    for proto, kw in options.items():
        if proto not in runners:
            raise RadprobeError(
                f"--set {proto}.…: protocol {proto!r} is not being run (running: {', '.join(runners)})"
            )
        params = [p for p in inspect.signature(runners[proto]).parameters if p != "data"]
        for name in kw:
            if name not in params:
                raise RadprobeError(
                    f"--set {proto}.{name}: unknown option; {proto} takes {', '.join(params)}"
                )


@dataclass
class EvalSummary:
    """What an evaluation did: cache hits per split, timings, and the rows it wrote."""

    run_id: str
    out: str
    backbone: str
    dataset: str
    cache_hit: bool
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RadprobeError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise RadprobeError(f"--device {name!r}: expected cpu, cuda, cuda:N, mps or auto")
    return name


def validate_protocols(protocols: list[str], options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Runners of ``protocols``; unknown names or options raise one-line errors."""
    if not protocols:
        raise RadprobeError("--protocol: expected at least one protocol name")
    runners = {p: get_protocol(p) for p in protocols}
    _check_options(runners, options)
    for p, kw in options.items():
        check_options(p, kw)  # values too, before any feature is extracted
    return runners


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
    _pooled: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

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

    def _split(self, split: str, pool: str) -> SplitFeatures:
        ds, fs = self.dataset, self.feats[split]
        labels, groups = ds.labels(ds.split(split)), ds.patients(ds.split(split))
        if not self.volumes:
            return SplitFeatures(np.asarray(fs.cls), labels, groups, blocks=fs.blocks)
        if (split, pool) not in self._pooled:  # a study runs many jobs on one Prepared
            self._pooled[split, pool] = pool_volumes(fs, pool)
        pooled = self._pooled[split, pool]
        bags = Bags(fs.cls, volume_offsets(fs))
        return SplitFeatures(pooled["cls"], labels, groups, blocks=pooled.get("blocks"), bags=bags)

    def protocol_input(self, seed: int, volume_pool: str | None = None) -> ProtocolInput:
        """Features of every split; ``volume_pool`` (default: this Prepared's) pools 3D volumes."""
        pool = volume_pool or self.volume_pool
        if pool not in VOLUME_POOLS:
            raise RadprobeError(f"--volume-pool {pool!r}: expected one of {', '.join(VOLUME_POOLS)}")
        splits = {s: self._split(s, pool) for s in ("train", "val", "test")}
        ds = self.dataset
        return ProtocolInput(
            splits["train"], splits["val"], splits["test"], ds.task, len(ds.classes), seed=seed
        )


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
) -> tuple[dict[str, FeatureSet], dict[str, ExtractStats]]:
    """Features of train / val / test from the cache or one extraction each, with progress bars.

    ``warn`` receives one-line notices (e.g. a corrupt cache entry being rebuilt).
    """
    cache = FeatureCache((cfg.cache_root or cache_dir()) / "features")
    feats: dict[str, FeatureSet] = {}
    stats: dict[str, ExtractStats] = {}
    name = backbone.info.name
    with make_progress(cfg.progress) as bar:
        for split in ("train", "val", "test"):
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
            )
            reused = st.extra.get("reused_rows", 0)
            suffix = " (cached)" if st.cache_hit else f" ({reused} rows reused)" if reused else ""
            bar.update(task, completed=n, description=f"{name} · {split}{suffix}")
            if cache.last_problem:
                st.extra["rebuilt"] = cache.last_problem
                if warn is not None:
                    warn(cache.last_problem)
                cache.last_problem = None
            feats[split], stats[split] = fs, st
    return feats, stats


def prepare(cfg: EvalConfig, warn: Any = None) -> Prepared:
    """Validate the inputs, load dataset and backbone, and extract (or find cached) features.

    Nothing is written outside the feature cache. ``warn`` receives one-line notices (e.g. a
    corrupt cache entry being rebuilt).
    """
    from radprobe.backbones import create_backbone
    from radprobe.data import load_dataset

    if cfg.n_boot < 0:
        raise RadprobeError(f"--bootstrap {cfg.n_boot}: expected a non-negative number of resamples")
    if cfg.volume_pool not in VOLUME_POOLS:
        raise RadprobeError(f"--volume-pool {cfg.volume_pool!r}: expected one of {', '.join(VOLUME_POOLS)}")
    device = _device(cfg.device)
    dataset = load_dataset(cfg.dataset)
    if dataset.task not in CLASSIFICATION_TASKS:
        raise RadprobeError(
            f"dataset {cfg.dataset} is a {dataset.task} dataset; these protocols need a classification "
            f"dataset ({', '.join(CLASSIFICATION_TASKS)})"
        )
    if dataset.ndim != 3:
        for p in cfg.protocols:
            if p in VOLUME_PROTOCOLS:
                raise _needs_volumes(p, cfg.dataset, dataset.ndim)
        if cfg.volume_pool != "mean":
            raise RadprobeError(
                f"--volume-pool {cfg.volume_pool}: applies to 3D datasets only; {cfg.dataset} is "
                f"{dataset.ndim}D"
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
    return Prepared(dataset, backbone, device, feats, stats, volume_pool=cfg.volume_pool)


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


def _env(device: str, feats: Iterable[FeatureSet] = ()) -> dict[str, Any]:
    env = {
        "radprobe": radprobe.__version__,
        "python": platform.python_version(),
        "torch": __import__("torch").__version__,
        "device": device,
        "machine": platform.machine(),
    }
    # The precision the cached features were computed in (bf16 on CUDA), which may differ from how
    # this row's head ran: the features may come from another machine's extraction.
    precisions = sorted({str(f.meta.get("precision", "fp32")) for f in feats})
    if precisions:
        env["feature_precision"] = "/".join(precisions)
    return env


@contextmanager
def _threads_for(n_values: int) -> Iterator[None]:
    """One torch thread and one BLAS thread for small fits: their many tiny ops pay thread sync, not
    compute (sklearn's lbfgs on 2000x2048: 0.15 s on one thread, 0.35 s on two). It also makes their
    results independent of the thread count: lbfgs at large C lands elsewhere with another BLAS
    summation order, and torchrun and Ray set OMP_NUM_THREADS=1, so the selected C followed the
    executor."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    small = n_values < 2_000_000
    if small:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1 if small else None):
            yield
    finally:
        torch.set_num_threads(before)


def _needs_volumes(protocol: str, dataset: str, ndim: int) -> RadprobeError:
    return RadprobeError(
        f"--protocol {protocol}: needs a 3D dataset (it attends over each volume's slices); "
        f"{dataset} is {ndim}D"
    )


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
    runner = get_protocol(name)
    options = check_options(name, options)
    dataset, info = prep.dataset, prep.backbone.info
    if name in VOLUME_PROTOCOLS and not prep.volumes:
        raise _needs_volumes(name, dataset.name, dataset.ndim)
    pool = volume_pool or prep.volume_pool
    data = prep.protocol_input(seed, pool)
    t0 = time.perf_counter()
    try:
        bags = data.train.bags if name in VOLUME_PROTOCOLS else None
        with _threads_for(np.asarray(data.train.features if bags is None else bags.features).size):
            result = runner(data, **options)
    except (TypeError, ValueError) as e:
        if options:
            raise RadprobeError(f"--set {name}.…: {e}") from None
        raise
    wall = time.perf_counter() - t0
    if prep.volumes and name not in VOLUME_PROTOCOLS:
        # the pooling is part of what was evaluated: mean and max rows get their own keys
        result.hparams = {**result.hparams, "volume_pool": pool}
        for sm in result.summaries:
            sm.hparams = {**sm.hparams, "volume_pool": pool}
    meta_stats = [f.meta.get("stats") or {} for f in prep.feats.values()]
    base = {
        "run_id": run_id,
        "backbone": info.name,
        "weights_digest": info.weights_digest,
        "dataset": dataset.name,
        "manifest_digest": dataset.manifest_digest(),
        "split_digest": dataset.split_digest("test"),
        "seed": seed,
        "n": len(data.test),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "task": dataset.task,
        "num_classes": len(dataset.classes),
        "resolution": prep.backbone.preprocess.resolution,
        "params": info.params,
        "wall_time_s": wall,
        "extract_time_s": float(sum(m.get("wall_time_s", 0.0) for m in meta_stats)),
        "imgs_per_s": forward_rate(meta_stats),
        "peak_mem_mb": max(
            [s.peak_mem_mb for s in prep.stats.values()] + [m.get("peak_mem_mb", 0.0) for m in meta_stats]
        ),
        "feature_keys": [prep.feats[s].key for s in ("train", "val", "test")],
        "env": _env(prep.device, prep.feats.values()),
    }
    key_base = {
        "backbone": info.name,
        "weights": info.weights_digest,
        "preprocess": prep.backbone.preprocess.to_dict(),
        "dataset": dataset.manifest_digest(),
        "splits": [dataset.split_digest(s) for s in ("train", "val", "test")],
        "seed": seed,
    }
    rows = []
    for sm in result.summaries:
        rows.append(
            ResultRow(
                **base,
                eval_key=digest({**key_base, "protocol": sm.protocol, "hparams": sm.hparams}, 24),
                protocol=sm.protocol,
                metric=sm.metric,
                value=sm.value,
                ci_low=sm.ci_low,
                ci_high=sm.ci_high,
                ci_method=sm.ci_method,
                hparams=sm.hparams,
                selected=sm.selected,
                trainable_params=int(sm.selected.get("trainable_params", 0)),
                warnings=result.warnings + sm.warnings,
            )
        )
    if result.summaries:
        return rows
    if result.scores is None:
        raise RuntimeError(f"protocol {name} returned neither scores nor summaries")
    metrics = bootstrap_metrics(
        data.test.labels, result.scores, dataset.task, groups=data.test.groups, n_boot=n_boot, seed=seed
    )
    eval_key = digest({**key_base, "protocol": name, "hparams": result.hparams, "n_boot": n_boot}, 24)
    Predictions(
        sample_ids=np.asarray([r.sample_id for r in dataset.split("test")]),
        groups=data.test.groups,
        labels=data.test.labels,
        scores=result.scores,
    ).save(predictions_path(out, eval_key))
    for m in metrics:
        rows.append(
            ResultRow(
                **base,
                eval_key=eval_key,
                protocol=name,
                metric=m.name,
                value=m.value,
                ci_low=m.ci_low if n_boot else None,
                ci_high=m.ci_high if n_boot else None,
                ci_method=f"patient bootstrap x{n_boot}, percentile 95%" if n_boot else "",
                hparams=result.hparams,
                selected=result.selected,
                trainable_params=int(result.selected.get("trainable_params", 0)),
                warnings=result.warnings + m.warnings,
            )
        )
    return rows


SEGMENTATION_PREFIX = "seg-"
TRAINED_PROTOCOLS = ("finetune", "lora", "dora", "bitfit", "vpt", "partial")


def _family(protocol: str) -> str:
    if protocol.startswith(SEGMENTATION_PREFIX):
        return "segmentation"
    return "trained" if protocol in TRAINED_PROTOCOLS else "frozen"


def evaluate(cfg: EvalConfig, warn: Any = None) -> EvalSummary:
    """Run every protocol of ``cfg`` and write one result row per (protocol, metric).

    Frozen-feature protocols run here; segmentation protocols (``seg-*``) are handed to
    :mod:`radprobe.segmentation`, and trained ones (fine-tuning, PEFT) to :mod:`radprobe.finetune`.
    """
    families = {_family(p) for p in cfg.protocols}
    if len(families) > 1:
        raise RadprobeError(
            f"--protocol {','.join(cfg.protocols)}: frozen-feature, segmentation and trained protocols "
            "run in separate calls"
        )
    if families == {"segmentation"}:
        try:
            from radprobe.segmentation import evaluate_segmentation
        except ImportError:
            raise RadprobeError(
                f"--protocol {cfg.protocols[0]}: segmentation protocols are not available"
            ) from None
        return evaluate_segmentation(cfg, warn)
    if families == {"trained"}:
        try:
            from radprobe.finetune import evaluate_finetune
        except ImportError:
            raise RadprobeError(
                f"--protocol {cfg.protocols[0]}: fine-tuning protocols are not available"
            ) from None
        return evaluate_finetune(cfg, warn)
    validate_protocols(cfg.protocols, cfg.options)
    prep = prepare(cfg, warn)
    run_id = uuid.uuid4().hex[:12]
    summary = EvalSummary(
        run_id=run_id,
        out=str(cfg.out),
        backbone=prep.backbone.info.name,
        dataset=prep.dataset.name,
        cache_hit=prep.cache_hit,
        splits=prep.split_summary(),
    )
    with ResultStore(cfg.out) as store:
        for name in cfg.protocols:
            rows = run_protocol(prep, name, cfg.options.get(name, {}), cfg.seed, cfg.n_boot, run_id, cfg.out)
            store.write(rows)
            summary.rows.extend(asdict(r) for r in rows)
    return summary
