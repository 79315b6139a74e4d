"""The one runner: dataset → backbone → cache → protocols → metrics → store, for every family.

:func:`evaluate` checks every protocol name, option and value against the registry, loads the
dataset once and checks that each protocol fits it, then validates each family's plan (masks,
backbone, methods) — all before any feature is extracted or any row written. It then runs the
families in turn (frozen features, segmentation heads, trained models) into one results store, so
``eval -p knn,linear,seg-linear,lora`` works in one call on a dataset with labels and masks
(``mask_classes=``): frozen protocols read its classification view, segmentation protocols its
segmentation view, and trained protocols train on its own task (its labels).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, replace
from typing import Any

from radprobe.protocols import registry
from radprobe.results import ResultStore
from radprobe.run import frozen, segment, trained
from radprobe.run.config import EvalConfig, EvalSummary, check_n_boot, check_protocol_list, parse_overrides
from radprobe.run.frozen import Prepared, extract, prepare, run_protocol  # the public faces

__all__ = [
    "EvalConfig",
    "EvalSummary",
    "Prepared",
    "evaluate",
    "extract",
    "parse_overrides",
    "prepare",
    "run_protocol",
    "validate_protocols",
]


def validate_protocols(protocols: list[str], options: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each protocol's family; unknown names, options of protocols not being run, unknown options
    and bad values raise one-line errors, before anything is loaded."""
    check_protocol_list(protocols, options)
    families = {p: registry.get(p).family for p in protocols}
    for proto, kw in options.items():
        registry.check_options(proto, kw)
    return families


def _part(cfg: EvalConfig, protocols: list[str]) -> EvalConfig:
    """``cfg`` narrowed to ``protocols`` (one family's) and their options."""
    return replace(cfg, protocols=protocols, options={p: o for p, o in cfg.options.items() if p in protocols})


def evaluate(cfg: EvalConfig, warn: Any = None) -> EvalSummary:
    """Run every protocol of ``cfg`` and write one result row per (protocol, metric)."""
    from radprobe.data import load_dataset

    families = validate_protocols(cfg.protocols, cfg.options)
    check_n_boot(cfg.n_boot)
    dataset = load_dataset(cfg.dataset)
    views = {f: view_for(dataset, f) for f in registry.FAMILIES}
    for p in cfg.protocols:
        view = views[families[p]]
        registry.check_fit(p, cfg.dataset, view.task, view.ndim)
    by_family = {f: [p for p in cfg.protocols if families[p] == f] for f in registry.FAMILIES}
    # every family is validated before the first extracts or trains anything
    seg, train, frozen_ = (by_family[f] for f in ("segmentation", "trained", "frozen"))
    seg_plan = segment.validate(_part(cfg, seg), views["segmentation"]) if seg else None
    train_plan = trained.validate(_part(cfg, train), views["trained"]) if train else None
    prep = prepare(_part(cfg, frozen_), warn, views["frozen"]) if frozen_ else None
    run_id = uuid.uuid4().hex[:12]
    summaries: list[EvalSummary] = []
    with ResultStore(cfg.out) as store:
        if prep is not None:
            summaries.append(_run_frozen(cfg, prep, by_family["frozen"], store, run_id))
        if seg_plan is not None:
            summaries.append(segment.run(seg_plan, store, run_id, warn))
        if train_plan is not None:
            summaries.append(trained.run(train_plan, store, run_id, warn))
    return _merge(summaries)


# The view of a dataset each family reads; trained protocols train on the dataset's own task.
_KIND = {"frozen": "classification", "segmentation": "segmentation"}


def view_for(dataset: Any, family: str) -> Any:
    """The dataset as ``family`` reads it: a labelled dataset with masks serves both kinds."""
    kind = _KIND.get(family)
    return dataset.view(kind) if kind in dataset.kinds() else dataset


def _run_frozen(
    cfg: EvalConfig, prep: Prepared, protocols: list[str], store: ResultStore, run_id: str
) -> EvalSummary:
    summary = EvalSummary(
        run_id=run_id,
        out=str(cfg.out),
        backbone=prep.backbone.info.name,
        dataset=prep.dataset.name,
        cache_hit=prep.cache_hit,
        splits=prep.split_summary(),
    )
    for name in protocols:
        rows = frozen.run_protocol(
            prep, name, cfg.options.get(name, {}), cfg.seed, cfg.n_boot, run_id, cfg.out
        )
        store.write(rows)
        summary.rows.extend(asdict(r) for r in rows)
    return summary


def _merge(parts: list[EvalSummary]) -> EvalSummary:
    """One summary of the families' runs: the first family's splits, every family's rows."""
    first = parts[0]
    return EvalSummary(
        run_id=first.run_id,
        out=first.out,
        backbone=first.backbone,
        dataset=first.dataset,
        cache_hit=all(p.cache_hit for p in parts),
        splits=first.splits,
        rows=[r for p in parts for r in p.rows],
    )
