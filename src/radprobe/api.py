"""The Python surface over the one runner, for notebooks and scripts; the CLI calls these too.

import radprobe
summary = radprobe.evaluate(backbone="dinov2-s", dataset="synthetic:seg2d",
                            protocols=["knn", "seg-linear", "lora"], out="runs/x")
df = radprobe.results("runs/x")          # one row per (protocol, metric), as a DataFrame
radprobe.run_study("study.yaml")          # or a mapping with backbones, datasets, protocols
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radprobe.errors import RadprobeError

if TYPE_CHECKING:
    import pandas as pd

    from radprobe.run.config import EvalSummary
    from radprobe.run.study import StudyOutcome


def evaluate(
    backbone: str,
    dataset: str,
    protocols: Sequence[str] | str,
    out: str | Path,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    device: str = "cpu",
    progress: bool = False,
    warn: Callable[[str], None] | None = None,
    **settings: Any,
) -> EvalSummary:
    """Evaluate ``backbone`` on ``dataset`` under ``protocols`` (any family, mixed) into run
    directory ``out``; returns what ran and its rows (also written to ``out/results.db``).

    ``options``: per-protocol options, e.g. ``{"linear": {"epochs": 20}}``. ``settings``: any other
    field of :class:`radprobe.run.EvalConfig` (``weights``, ``resolution``, ``batch_size``,
    ``num_workers``, ``n_blocks``, ``volume_pool``, ``pretrained``, ...). Bad input raises
    :class:`radprobe.errors.RadprobeError` with one line, before anything is extracted.
    """
    from dataclasses import fields

    from radprobe.run.config import EvalConfig
    from radprobe.run.evaluate import evaluate as run_evaluate

    names = [p.strip() for p in protocols.split(",")] if isinstance(protocols, str) else list(protocols)
    known = {f.name for f in fields(EvalConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise RadprobeError(
            f"evaluate(): unknown setting {unknown[0]!r}; expected one of {', '.join(sorted(known))}"
        )
    cfg = EvalConfig(
        backbone=backbone,
        dataset=dataset,
        protocols=names,
        out=Path(out),
        seed=seed,
        n_boot=n_boot,
        device=device,
        progress=progress,
        options={p: dict(o) for p, o in (options or {}).items()},
        **settings,
    )
    return run_evaluate(cfg, warn=warn)


def results(run_dir: str | Path, **where: Any) -> pd.DataFrame:
    """The rows of a run directory as a DataFrame (one row per evaluation and metric); ``where``
    filters on columns, e.g. ``protocol="knn"``."""
    from radprobe.results import read_results

    return read_results(run_dir, **where)


def run_study(
    study: str | Path | Mapping[str, Any],
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    fail_fast: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> StudyOutcome:
    """Run a study (a YAML path, ``builtin:<name>``, or a mapping of the same shape) into ``out``
    (default: the study's ``out``, else ``runs/<name>``); finished jobs are skipped."""
    from radprobe.run.study import run_dir_of
    from radprobe.run.study import run_study as run
    from radprobe.run.study_config import StudyConfig, apply_overrides, load_study

    if isinstance(study, Mapping):
        from pydantic import ValidationError

        from radprobe.run.study_config import format_errors

        try:
            cfg = StudyConfig.model_validate(apply_overrides(dict(study), list(overrides)))
        except ValidationError as e:
            raise RadprobeError(format_errors("study", e)) from None
    else:
        cfg = load_study(str(study), list(overrides))
    return run(cfg, run_dir_of(cfg, out), fail_fast=fail_fast, progress=progress, log=log)
