"""The path every evaluation takes: dataset → backbone → cache → protocol → metrics → store."""

from __future__ import annotations

import platform
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import radprobe
from radprobe.config import cache_dir
from radprobe.errors import RadprobeError
from radprobe.features.cache import FeatureCache, FeatureSet, FeatureSpec
from radprobe.features.extract import ExtractStats, extract_split
from radprobe.metrics import bootstrap_metrics
from radprobe.progress import make_progress
from radprobe.protocols import ProtocolInput, get_protocol
from radprobe.protocols.base import SplitFeatures
from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import Predictions, predictions_path
from radprobe.utils import digest

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
            value = yaml.safe_load(text)
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
    if name not in ("cpu",) and not name.startswith("cuda") and name != "mps":
        raise RadprobeError(f"--device {name!r}: expected cpu, cuda, cuda:N, mps or auto")
    return name


def _load_inputs(cfg: EvalConfig):  # type: ignore[no-untyped-def]
    """Validate everything and load the dataset and backbone before any output is written."""
    from radprobe.backbones import create_backbone
    from radprobe.data import load_dataset

    runners = {p: get_protocol(p) for p in cfg.protocols}
    _check_options(runners, cfg.options)
    if not cfg.protocols:
        raise RadprobeError("--protocol: expected at least one protocol name")
    if cfg.n_boot < 0:
        raise RadprobeError(f"--bootstrap {cfg.n_boot}: expected a non-negative number of resamples")
    device = _device(cfg.device)
    dataset = load_dataset(cfg.dataset)
    if dataset.task not in CLASSIFICATION_TASKS:
        raise RadprobeError(
            f"dataset {cfg.dataset} is a {dataset.task} dataset; protocols "
            f"{', '.join(cfg.protocols)} need a classification dataset ({', '.join(CLASSIFICATION_TASKS)})"
        )
    for s in ("train", "val", "test"):
        if not dataset.split(s):
            raise RadprobeError(f"dataset {cfg.dataset} has no {s!r} split")
    backbone = create_backbone(
        cfg.backbone,
        weights=cfg.weights,
        allow_partial_weights=cfg.allow_partial_weights,
        resolution=cfg.resolution,
    )
    return runners, device, dataset, backbone


def _extract_all(cfg: EvalConfig, dataset, backbone, device: str):  # type: ignore[no-untyped-def]
    cache = FeatureCache((cfg.cache_root or cache_dir()) / "features")
    spec = FeatureSpec(n_blocks=cfg.n_blocks)
    feats: dict[str, FeatureSet] = {}
    stats: dict[str, ExtractStats] = {}
    with make_progress(cfg.progress) as bar:
        for split in ("train", "val", "test"):
            n = len(dataset.split(split))
            task = bar.add_task(f"{backbone.info.name} · {split}", total=n)
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
            )
            bar.update(
                task,
                completed=n,
                description=f"{backbone.info.name} · {split}" + (" (cached)" if st.cache_hit else ""),
            )
            ids = [r.sample_id for r in dataset.split(split)]
            if fs.sample_ids != ids:
                raise RuntimeError(f"cache entry {fs.path} holds other samples than split {split}")
            if cache.last_problem:
                stats_note = cache.last_problem
                st.extra["rebuilt"] = stats_note
                cache.last_problem = None
            feats[split], stats[split] = fs, st
    return feats, stats


def extract(cfg: EvalConfig) -> EvalSummary:
    """Extract (or find cached) features of every split, writing nothing else."""
    _, device, dataset, backbone = _load_inputs(cfg)
    feats, stats = _extract_all(cfg, dataset, backbone, device)
    return EvalSummary(
        run_id="",
        out="",
        backbone=backbone.info.name,
        dataset=dataset.name,
        cache_hit=all(s.cache_hit for s in stats.values()),
        splits=_split_summary(feats, stats),
    )


def _split_summary(feats: dict[str, FeatureSet], stats: dict[str, ExtractStats]) -> dict[str, dict[str, Any]]:
    return {
        s: {"n": len(feats[s]), "cache_key": feats[s].key, "path": str(feats[s].path), **asdict(stats[s])}
        for s in feats
    }


def evaluate(cfg: EvalConfig) -> EvalSummary:
    """Run every protocol of ``cfg`` and write one result row per (protocol, metric)."""
    runners, device, dataset, backbone = _load_inputs(cfg)
    feats, stats = _extract_all(cfg, dataset, backbone, device)
    info = backbone.info
    run_id = uuid.uuid4().hex[:12]
    split_inputs = {
        s: SplitFeatures(
            np.asarray(feats[s].cls),
            dataset.labels(dataset.split(s)),
            dataset.patients(dataset.split(s)),
            blocks=feats[s].blocks,
        )
        for s in ("train", "val", "test")
    }
    data = ProtocolInput(
        train=split_inputs["train"],
        val=split_inputs["val"],
        test=split_inputs["test"],
        task=dataset.task,
        num_classes=len(dataset.classes),
        seed=cfg.seed,
    )
    extract_time = sum((feats[s].meta.get("stats") or {}).get("wall_time_s", 0.0) for s in feats)
    imgs_per_s = np.mean([(feats[s].meta.get("stats") or {}).get("imgs_per_s", 0.0) for s in feats])
    env = {
        "radprobe": radprobe.__version__,
        "python": platform.python_version(),
        "torch": __import__("torch").__version__,
        "device": device,
        "machine": platform.machine(),
    }
    summary = EvalSummary(
        run_id=run_id,
        out=str(cfg.out),
        backbone=info.name,
        dataset=dataset.name,
        cache_hit=all(s.cache_hit for s in stats.values()),
        splits=_split_summary(feats, stats),
    )
    with ResultStore(cfg.out) as store:
        for name, runner in runners.items():
            t0 = time.perf_counter()
            try:
                result = runner(data, **cfg.options.get(name, {}))
            except (TypeError, ValueError) as e:
                if cfg.options.get(name):
                    raise RadprobeError(f"--set {name}.…: {e}") from None
                raise
            wall = time.perf_counter() - t0
            base = {
                "run_id": run_id,
                "backbone": info.name,
                "weights_digest": info.weights_digest,
                "dataset": dataset.name,
                "manifest_digest": dataset.manifest_digest(),
                "split_digest": dataset.split_digest("test"),
                "seed": cfg.seed,
                "n": len(data.test),
                "n_train": len(data.train),
                "n_val": len(data.val),
                "n_test": len(data.test),
                "params": info.params,
                "wall_time_s": wall,
                "extract_time_s": extract_time,
                "imgs_per_s": float(imgs_per_s),
                "peak_mem_mb": max(s.peak_mem_mb for s in stats.values()),
                "feature_keys": [feats[s].key for s in ("train", "val", "test")],
                "env": env,
            }
            key_base = {
                "backbone": info.name,
                "weights": info.weights_digest,
                "preprocess": backbone.preprocess.to_dict(),
                "dataset": dataset.manifest_digest(),
                "splits": [dataset.split_digest(s) for s in ("train", "val", "test")],
                "seed": cfg.seed,
            }
            rows = []
            if result.summaries:
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
                            warnings=result.warnings,
                        )
                    )
            else:
                assert result.scores is not None, f"protocol {name} returned neither scores nor summaries"
                metrics = bootstrap_metrics(
                    data.test.labels,
                    result.scores,
                    dataset.task,
                    groups=data.test.groups,
                    n_boot=cfg.n_boot,
                    seed=cfg.seed,
                )
                eval_key = digest(
                    {**key_base, "protocol": name, "hparams": result.hparams, "n_boot": cfg.n_boot}, 24
                )
                Predictions(
                    sample_ids=np.asarray([r.sample_id for r in dataset.split("test")]),
                    groups=data.test.groups,
                    labels=data.test.labels,
                    scores=result.scores,
                ).save(predictions_path(cfg.out, eval_key))
                for m in metrics:
                    rows.append(
                        ResultRow(
                            **base,
                            eval_key=eval_key,
                            protocol=name,
                            metric=m.name,
                            value=m.value,
                            ci_low=m.ci_low if cfg.n_boot else None,
                            ci_high=m.ci_high if cfg.n_boot else None,
                            ci_method=f"patient bootstrap x{cfg.n_boot}, percentile 95%"
                            if cfg.n_boot
                            else "",
                            hparams=result.hparams,
                            selected=result.selected,
                            trainable_params=int(result.selected.get("trainable_params", 0)),
                            warnings=result.warnings + m.warnings,
                        )
                    )
            store.write(rows)
            summary.rows.extend(asdict(r) for r in rows)
    return summary
