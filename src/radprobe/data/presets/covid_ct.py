"""SARS-CoV-2 CT preset: per-patient folders of CT slice images -> one volume per patient."""

from __future__ import annotations

import re
from pathlib import Path

from radprobe.data.formats.common import Source, axis_option
from radprobe.data.presets.common import finish, root_dir
from radprobe.data.problems import Problem, error
from radprobe.data.readers import IMAGE_SUFFIXES, natural_key
from radprobe.data.records import ImageRef, Record
from radprobe.data.spec import Spec
from radprobe.errors import DataError

POSITIVE = frozenset({"covid", "covid19", "covid-19", "sars-cov-2", "sarscov2", "positive", "ct_covid"})
NEGATIVE = frozenset(
    {"non-covid", "noncovid", "non_covid", "healthy", "others", "other", "normal", "negative", "ct_noncovid"}
)
BINARY_CLASSES = ("not COVID", "COVID")


def _norm(name: str) -> str:
    return re.sub(r"\s+", "-", name.strip().lower())


def _visible_dirs(d: Path) -> list[Path]:
    return sorted(
        (p for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
        key=lambda p: natural_key(p.name),
    )


def class_dirs(root: Path) -> list[Path]:
    """The class folders, looking through one wrapper folder (e.g. ``New_Data_CoV2``)."""
    dirs = _visible_dirs(root)
    known = POSITIVE | NEGATIVE
    if len(dirs) == 1 and _norm(dirs[0].name) not in known:
        dirs = _visible_dirs(dirs[0])
    if not dirs:
        raise DataError(
            f"sars-cov-2-ct: no class folders in {root}; expected e.g. COVID/ and non-COVID/ (or Covid/, "
            "Healthy/, Others/)"
        )
    unknown = [d.name for d in dirs if _norm(d.name) not in known]
    if unknown:
        raise DataError(
            f"sars-cov-2-ct: unknown class folder(s) {unknown} in {dirs[0].parent}; expected COVID-positive "
            f"({', '.join(sorted(POSITIVE))}) or negative ({', '.join(sorted(NEGATIVE))}) names"
        )
    if not any(_norm(d.name) in POSITIVE for d in dirs):
        raise DataError(f"sars-cov-2-ct: no COVID class folder among {[d.name for d in dirs]}")
    return dirs


def index_sars(spec: Spec) -> Source:
    root = root_dir(spec)
    mode = (spec.options.get("labels") or "binary").strip().lower()
    if mode not in ("binary", "source"):
        raise DataError(f"labels={mode!r}: expected binary or source")
    axis = axis_option(spec.options)
    dirs = class_dirs(root)
    classes = BINARY_CLASSES if mode == "binary" else tuple(d.name for d in dirs)
    issues: list[Problem] = []
    records: list[Record] = []
    for k, cdir in enumerate(dirs):
        label = int(_norm(cdir.name) in POSITIVE) if mode == "binary" else k
        loose = [f for f in cdir.iterdir() if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES)]
        if loose:
            issues.append(
                error(
                    f"{cdir} holds {len(loose)} slice image(s) outside patient folders "
                    f"(e.g. {loose[0].name}); "
                    "expected <class>/<patient>/<slice>.png"
                )
            )
        for pdir in _visible_dirs(cdir):
            if not any(f.name.lower().endswith(IMAGE_SUFFIXES) for f in pdir.iterdir() if f.is_file()):
                issues.append(
                    error(f"patient folder {pdir} holds no slice images ({', '.join(IMAGE_SUFFIXES)})")
                )
                continue
            # Patient folder names repeat across classes ("Patient 1" in Covid/ and Healthy/).
            pid = f"{cdir.name}/{pdir.name}"
            records.append(Record(pid, pid, ImageRef(str(pdir), "image-stack", axis=axis), label))
    conventions = {
        "labels": "COVID vs not" if mode == "binary" else "class folders",
        "slices": "natural file-name order",
    }
    return finish(
        spec,
        records,
        "binary" if len(classes) == 2 else "multiclass",
        classes,
        dirs[0].parent,
        issues,
        conventions,
        default_name="sars-cov-2-ct",
        patients_allowed=True,
        modality="ct",
    )
