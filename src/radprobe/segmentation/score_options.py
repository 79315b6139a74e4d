"""Options of how a segmentation protocol's test split is scored, shared by every segmentation runner.

They are not hyperparameters of the model: they stay out of ``hparams`` (so result keys do not change)
and the metric names state them instead (``nsd@2mm_macro``).

    nsd_tolerance_mm  NSD tolerance in millimetres. None (default): 2 mm where every case's voxel
                      spacing is known (NIfTI volumes), else 2 pixels (``nsd@2px``). Set, it needs
                      the spacing: a dataset without it is refused before anything is trained.
    score_at          "original" (default): predictions resized to each case's mask, scored there;
                      "input" (``preset=paper``): scored at the input resolution against the masks
                      resized nearest-exact, as Baharoon et al.'s eval transforms do. Rows of an
                      ``input`` run say so (``hparams.scored_at``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from radprobe.errors import OptionError

SCORING_OPTIONS: dict[str, Any] = {"nsd_tolerance_mm": None, "score_at": "original"}
SCORING_HELP = {
    "nsd_tolerance_mm": "NSD tolerance in mm (default: 2 mm with known voxel spacing, else 2 px)",
    "score_at": "original: at each case's mask size; input: at the input resolution (preset=paper)",
}
SCORING_TYPES = {"nsd_tolerance_mm": "float | None", "score_at": "str"}
SCORE_AT = ("original", "input")


def split_scoring(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (the runner's own, the scoring options)."""
    runner = {k: v for k, v in options.items() if k not in SCORING_OPTIONS}
    scoring = {k: v for k, v in options.items() if k in SCORING_OPTIONS}
    return runner, scoring


def resolve_scoring(proto: str, given: dict[str, Any], preset: str | None = None) -> dict[str, Any]:
    """The scoring options of ``proto`` with their defaults (``preset="paper"``: scored at the input
    resolution), each checked (one line naming it)."""
    out = dict(SCORING_OPTIONS)
    if preset == "paper":
        out["score_at"] = "input"
    at = given.get("score_at")
    if at is not None:
        if at not in SCORE_AT:
            raise OptionError("--set", f"{proto}.score_at={at!r}: expected 'original' or 'input'")
        out["score_at"] = at
    v = given.get("nsd_tolerance_mm")
    if v is not None:
        try:
            if isinstance(v, bool):
                raise ValueError
            x = float(v)
        except (TypeError, ValueError):
            x = -1.0
        if not math.isfinite(x) or x <= 0:
            raise OptionError("--set", f"{proto}.nsd_tolerance_mm={v!r}: expected a positive number of mm")
        out["nsd_tolerance_mm"] = x
    return out


def check_spacing(options: dict[str, dict[str, Any]], cases: Iterable[Any]) -> None:
    """Refuse an NSD tolerance in mm on cases whose voxel spacing is unknown (pixels only)."""
    asked = [(p, o["nsd_tolerance_mm"]) for p, o in options.items() if o.get("nsd_tolerance_mm") is not None]
    if not asked:
        return
    missing = next((c for c in cases if c.spacing is None), None)
    if missing is not None:
        proto, tol = asked[0]
        raise OptionError(
            "--set",
            f"{proto}.nsd_tolerance_mm={tol:g}: needs the voxel spacing of every case, and "
            f"{missing.record.image.path} has none (only NIfTI volumes carry it); "
            "leave nsd_tolerance_mm unset to score NSD in pixels",
        )
