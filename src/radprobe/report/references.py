"""Published numbers (``references.yaml``) and the rule that decides when one sits beside our row.

An entry matches a result row only when every key under its ``match`` agrees with the row; the
report prints "not comparable" otherwise. :func:`mismatch` names the first key that disagrees, so the
report can say why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

LIST_KEYS = ("dataset", "backbone")
INT_KEYS = ("num_classes", "resolution", "n_train", "n_val", "n_test")
STR_KEYS = ("protocol", "metric", "task")


@dataclass(frozen=True)
class Reference:
    """One published figure with its source and the exact setting it belongs to."""

    source_key: str
    source: str
    cell: str
    reported: str
    value: float
    match: dict[str, Any] = field(default_factory=dict)
    requires: str = ""
    caveat: str = ""  # what the source leaves open about how the figure was made

    def short_source(self) -> str:
        """The source up to its first comma (author, year), for table cells."""
        return self.source.split(",")[0] + (
            ", " + self.source.split(",")[1].strip() if "," in self.source else ""
        )


@cache
def load_references() -> tuple[Reference, ...]:
    """Every entry of the package's ``references.yaml``."""
    import yaml

    text = resources.files("radprobe.report").joinpath("references.yaml").read_text()
    data = yaml.safe_load(text)
    sources: dict[str, str] = data["sources"]
    out = []
    for e in data["entries"]:
        out.append(
            Reference(
                source_key=e["source"],
                source=sources[e["source"]],
                cell=e["cell"],
                reported=str(e["reported"]),
                value=float(e["value"]),
                match=dict(e.get("match") or {}),
                requires=str(e.get("requires") or ""),
                caveat=str(e.get("caveat") or ""),
            )
        )
    return tuple(out)


def mismatch(ref: Reference, row: dict[str, Any]) -> str:
    """The first ``match`` key on which ``row`` differs from ``ref`` ("" when all agree)."""
    for key, want in ref.match.items():
        if key in LIST_KEYS:
            allowed = want if isinstance(want, list) else [want]
            if row.get(key) not in allowed:
                return key
        elif key in INT_KEYS:
            try:
                if int(row.get(key) or -1) != int(want):
                    return key
            except (TypeError, ValueError):
                return key
        elif key == "hparams":
            hp = row.get("hparams") or {}
            for k, v in want.items():
                if hp.get(k) != v:
                    return f"hparams.{k}"
        elif key in STR_KEYS:
            if row.get(key) != want:
                return key
        else:  # an unknown key cannot be checked, so it never matches
            return key
    return ""


def matching(row: dict[str, Any], refs: tuple[Reference, ...] | None = None) -> list[Reference]:
    """Entries that sit beside ``row`` (usually none)."""
    refs = load_references() if refs is None else refs
    if row.get("derived"):
        return []  # pooled cross-validation rows are ours alone
    return [r for r in refs if not mismatch(r, row)]


def closest_mismatch(ref: Reference, rows: list[dict[str, Any]]) -> str:
    """For the references table: what keeps ``ref`` from every row (the most-matching row's miss)."""
    if not rows:
        return "no rows"
    order = list(ref.match)
    best = ""
    best_pos = -1
    for r in rows:
        miss = mismatch(ref, r)
        if not miss:
            return ""
        pos = order.index(miss.split(".")[0]) if miss.split(".")[0] in order else -1
        if pos > best_pos:
            best, best_pos = miss, pos
    want = ref.match.get(best.split(".")[0])
    if best.startswith("hparams."):
        want = (ref.match.get("hparams") or {}).get(best.split(".", 1)[1])
    if isinstance(want, list):
        want = " or ".join(str(w) for w in want)
    return f"{best} must be {want}"


def producing_job(ref: Reference, jobs: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The key of the study job whose rows would sit beside ``ref`` (from a study plan's jobs), or
    None with the reason none would. Only what a plan knows is checked: dataset, backbone, protocol
    (a ``fewshot-<inner>`` cell needs a few-shot job running ``inner`` at that many shots) and
    resolution; the split sizes and label set are the dataset preset's (``paper=1``)."""
    want = ref.match
    checks = [
        ("dataset", lambda j: _listed(want.get("dataset"), j["dataset"].split(":", 1)[0])),
        ("backbone", lambda j: _listed(want.get("backbone"), j["backbone"]["name"])),
        ("protocol", lambda j: _protocol_fits(want, j)),
        (
            "resolution",
            lambda j: "resolution" not in want or j.get("resolution") in (None, want["resolution"]),
        ),
    ]
    pool = jobs
    for name, ok in checks:
        kept = [j for j in pool if ok(j)]
        if not kept:
            what, shots = want.get(name), (want.get("hparams") or {}).get("shots")
            if name == "protocol" and shots is not None:
                return None, f"no {what} job of the study runs {shots}-shot"
            return (
                None,
                f"no job of the study has {name} {what}" if what is not None else f"no job fits {name}",
            )
        pool = kept
    return pool[0]["job_key"], ""


def _listed(allowed: Any, value: str) -> bool:
    return allowed is None or value in (allowed if isinstance(allowed, list) else [allowed])


def _protocol_fits(want: dict[str, Any], job: dict[str, Any]) -> bool:
    proto, opts = str(want.get("protocol", "")), job.get("options") or {}
    shots = (want.get("hparams") or {}).get("shots")
    if not proto.startswith("fewshot-"):  # segmentation heads take their few-shot sizes as an option
        return job["protocol"] == proto and (shots is None or shots in _as_list(opts.get("shots")))
    if job["protocol"] != "fewshot":
        return False
    from radprobe.protocols import fewshot

    # what a few-shot job runs when it names no inner protocols: the paper's linear, else all of them
    inner = opts.get("protocols") or (["linear"] if opts.get("preset") == "paper" else list(fewshot.INNER))
    return proto.removeprefix("fewshot-") in inner and (shots is None or shots in _as_list(opts.get("shots")))


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]
