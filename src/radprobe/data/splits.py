"""Patient-level, stratified, seeded train/val/test splits, saved to and reused from a split file.

Stratification: every patient gets one stratum, the rarest (dataset-wide) class among its samples
(multilabel: the rarest positive label, or "no finding"); segmentation has a single stratum. Patients
are shuffled within strata (seeded), strata are laid end to end, and each patient goes to the split
that is furthest below its target share of samples *so far*. Because every prefix of that sequence is
balanced, each stratum (a contiguous run) is split close to the target fractions too. A stratum with
at least as many patients as splits gets at least one patient in every split, so per-class metrics
exist everywhere (this over-represents very rare classes in val/test slightly, on purpose).

Existing splits are respected. Splits the source lacks are carved from its train patients in
proportion to ``fractions`` (e.g. train/test only -> val takes 0.1 / (0.7 + 0.1) of train patients).

The assignment is written to ``cache_dir()/splits/<manifest digest>-seed<seed>-<fractions>.csv``
(columns sample_id, patient_id, split), where the manifest digest is that of the records *before*
assignment. A later load with the same manifest, seed and fractions reuses the file, so splits stay
fixed even if this algorithm changes; editing the file pins a custom split.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from radprobe.config import cache_dir
from radprobe.data.records import SPLITS, Record, TaskType
from radprobe.errors import DataError
from radprobe.utils import atomic_write_text

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "tr": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "tune": "val",
    "test": "test",
    "testing": "test",
    "ts": "test",
    "holdout": "test",
}


def normalize_split(value: str) -> str | None:
    """Canonical split name for a split-column value, or None if it is not one."""
    return SPLIT_ALIASES.get(str(value).strip().lower())


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, val, test) fractions: three non-negative numbers summing to 1, train and test > 0."""
    try:
        tr, va, te = (float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DataError(f"split fractions {fractions!r}: expected three numbers (train, val, test)") from None
    if min(tr, va, te) < 0 or abs(tr + va + te - 1.0) > 1e-6 or tr == 0 or te == 0:
        raise DataError(
            f"split fractions {fractions!r}: expected non-negative (train, val, test) summing to 1 "
            "with train and test > 0"
        )
    return tr, va, te


def _strata(records: list[Record], task: TaskType) -> dict[str, tuple[int, int]]:
    """Per patient: (stratum order key, stratum id); rarer strata sort first."""
    by_patient: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_patient[r.patient_id].append(r)
    if task == "segmentation" or not records:
        return {p: (0, 0) for p in by_patient}
    counts: Counter[int] = Counter()
    for r in records:
        if task == "multilabel":
            counts.update(i for i, v in enumerate(r.label or ()) if v)  # type: ignore[arg-type]
        elif r.label is not None:
            counts[int(r.label)] += 1  # type: ignore[arg-type]
    out = {}
    for pid, recs in by_patient.items():
        present: set[int] = set()
        for r in recs:
            if task == "multilabel":
                present.update(i for i, v in enumerate(r.label or ()) if v)  # type: ignore[arg-type]
            elif r.label is not None:
                present.add(int(r.label))  # type: ignore[arg-type]
        if not present:
            out[pid] = (len(records) + 1, -1)  # "no finding" patients are the most common stratum
        else:
            rarest = min(present, key=lambda c: (counts[c], c))
            out[pid] = (counts[rarest], rarest)
    return out


def _allocate(
    records: list[Record], task: TaskType, fractions: Sequence[float], rng: np.random.Generator
) -> dict[str, int]:
    """Patient -> index into ``fractions`` (see the module docstring)."""
    sizes = Counter(r.patient_id for r in records)
    strata = _strata(records, task)
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for pid in sorted(sizes):
        groups[strata[pid]].append(pid)
    order: list[str] = []
    for key in sorted(groups):
        members = groups[key]
        order.extend(members[i] for i in rng.permutation(len(members)))
    frac = np.asarray(fractions, dtype=float)
    counts = np.zeros(len(frac))
    assign: dict[str, int] = {}
    for pid in order:
        size = sizes[pid]
        deficit = frac * (counts.sum() + size) - counts
        deficit[frac == 0] = -np.inf
        s = int(np.argmax(deficit))
        assign[pid] = s
        counts[s] += size
    # Every split should see every stratum (so per-class metrics exist), and exist at all, when there
    # are enough patients: move the smallest patient from the best-stocked split.
    active = [int(s) for s in np.flatnonzero(frac > 0)]
    for members in [*groups.values(), list(sizes)]:
        if len(members) < len(active):
            continue
        for s in active:
            per_split = Counter(assign[p] for p in members)
            if per_split[s]:
                continue
            donor = max(per_split, key=lambda k: (per_split[k], -k))
            if per_split[donor] < 2:
                continue
            _, moved = min((sizes[p], p) for p in members if assign[p] == donor)
            assign[moved] = s
    return assign


def assign_splits(
    records: list[Record],
    task: TaskType,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> list[Record]:
    """Records with ``split`` set: existing splits kept, missing ones carved at patient level."""
    fr = check_fractions(fractions)
    if not records:
        return []
    present = {r.split for r in records}
    if present == {None}:
        assign = _allocate(records, task, fr, np.random.default_rng(seed))
        return [replace(r, split=SPLITS[assign[r.patient_id]]) for r in records]
    if None in present:
        missing = next(r for r in records if r.split is None)
        raise DataError(f"sample {missing.sample_id} has no split while others do; give every sample a split")
    bad = present - set(SPLITS)
    if bad:
        raise DataError(f"unknown split name(s) {sorted(bad)}; expected {', '.join(SPLITS)}")
    if "train" not in present:
        raise DataError(f"the dataset's splits ({', '.join(sorted(present))}) have no train samples")
    missing_splits = [i for i, s in enumerate(SPLITS) if s not in present and fr[i] > 0]
    if not missing_splits:
        return list(records)
    sub = [fr[0]] + [fr[i] if i in missing_splits else 0.0 for i in (1, 2)]
    sub_fr = [f / sum(sub) for f in sub]
    train = [r for r in records if r.split == "train"]
    assign = _allocate(train, task, sub_fr, np.random.default_rng(seed))
    return [replace(r, split=SPLITS[assign[r.patient_id]]) if r.split == "train" else r for r in records]


def assign_patient_counts(
    records: list[Record], task: TaskType, counts: Sequence[int], *, seed: int = 0
) -> list[Record]:
    """Records split so that train/val/test hold exactly ``counts`` patients (e.g. a paper's 69/23/46).

    Patients are ordered as in :func:`assign_splits` (stratified, seeded) and allocated by patient
    count instead of sample count; every sample must be unsplit.
    """
    want = [int(c) for c in counts]
    if len(want) != 3 or min(want) < 0 or want[0] == 0 or want[2] == 0:
        raise DataError(
            f"patient counts {list(counts)}: expected train,val,test counts with train and test > 0"
        )
    if any(r.split is not None for r in records):
        raise DataError("patient counts apply to datasets without given splits; this one has splits already")
    patients = sorted({r.patient_id for r in records})
    if sum(want) != len(patients):
        raise DataError(
            f"patient counts {'/'.join(map(str, want))} sum to {sum(want)} but the dataset has "
            f"{len(patients)} patients"
        )
    # One pseudo-sample per patient (labelled like its rarest class) makes _allocate count patients.
    strata = _strata(records, task)
    proxies = [Record(p, p, records[0].image, strata[p][1]) for p in patients]
    frac = [c / sum(want) for c in want]
    kind: TaskType = "segmentation" if task == "segmentation" else "multiclass"
    assign = _allocate(proxies, kind, frac, np.random.default_rng(seed))
    # _allocate lands within a patient or two of the target; move patients to hit it exactly.
    order = list(assign)
    for _ in range(len(order)):
        have = Counter(assign.values())
        over = [s for s in range(3) if have[s] > want[s]]
        under = [s for s in range(3) if have[s] < want[s]]
        if not over:
            break
        moved = next(p for p in reversed(order) if assign[p] == over[0])
        assign[moved] = under[0]
    return [replace(r, split=SPLITS[assign[r.patient_id]]) for r in records]


def split_file_path(manifest_digest: str, seed: int, fractions: Sequence[float]) -> Path:
    """Where the assignment for this (unsplit) manifest, seed and fractions (or patient counts,
    given as integers) is stored."""
    if all(isinstance(f, int) for f in fractions):
        fr = "n" + "_".join(str(f) for f in fractions)
    else:
        fr = "_".join(f"{float(f):g}" for f in fractions)
    return cache_dir() / "splits" / f"{manifest_digest}-seed{seed}-{fr}.csv"


def write_split_file(path: Path, records: list[Record]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["sample_id", "patient_id", "split"])
    for r in records:
        w.writerow([r.sample_id, r.patient_id, r.split])
    atomic_write_text(path, buf.getvalue())


def read_split_file(path: Path) -> dict[str, str] | None:
    """sample_id -> split from a split file; None if absent or malformed (it is then rewritten)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    out = {}
    for row in rows:
        sid, split = row.get("sample_id"), normalize_split(row.get("split") or "")
        if sid is None or split is None:
            return None
        out[sid] = split
    return out


def apply_split_file(records: list[Record], path: Path) -> list[Record] | None:
    """Records with splits from ``path``, or None if the file does not cover exactly these samples."""
    mapping = read_split_file(path)
    if mapping is None or len(mapping) != len(records) or any(r.sample_id not in mapping for r in records):
        return None
    return [replace(r, split=mapping[r.sample_id]) for r in records]


def check_leakage(records: list[Record]) -> list[str]:
    """One message per patient whose samples fall in more than one split, naming the sample ids."""
    where: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.split is not None:
            where[r.patient_id][r.split].append(r.sample_id)
    out = []
    for pid in sorted(where):
        splits = where[pid]
        if len(splits) < 2:
            continue
        order = sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))
        parts = []
        for s in order:
            ids = splits[s]
            shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} samples)" if len(ids) > 5 else "")
            parts.append(f"{s} ({shown})")
        out.append(f"patient {pid} appears in {len(splits)} splits: " + "; ".join(parts))
    return out
