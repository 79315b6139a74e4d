"""Class balance warnings: a class with no samples, with one (a stray label?), or none in some split.

``data check`` lists them with the other problems; ``load_dataset`` logs them. Each names the
manifest rows (or files) of the class, so a typo in one label cell is easy to find.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radprobe.data.problems import Problem, warning
from radprobe.data.records import SPLITS, Record, TaskType, labels_array, origin

CLASS_TASKS = ("binary", "multiclass", "multilabel")
SHOWN_ROWS = 5


def _rows(records: list[Record]) -> str:
    """``m.csv row 4`` / ``m.csv rows 4, 7, 9 and 3 more`` (files when there is no manifest)."""
    head = records[:SHOWN_ROWS]
    manifests = {r.meta.get("manifest") for r in head}
    if len(manifests) == 1 and None not in manifests and all("row" in r.meta for r in head):
        rows = ", ".join(str(r.meta["row"]) for r in head)
        shown = f"{manifests.pop()} row{'s' if len(records) > 1 else ''} {rows}"
    else:
        shown = ", ".join(origin(r) for r in head)
    more = len(records) - SHOWN_ROWS
    return f"{shown} and {more} more" if more > 0 else shown


def class_problems(
    records: list[Record], task: TaskType, classes: tuple[str, ...], root: str, explicit: bool
) -> list[Problem]:
    """Warnings about classes without enough samples; ``explicit``: the classes came from ``classes=``.

    Records must carry their splits. Without ``classes=`` every distinct label value becomes a class,
    so a class of one sample is reported as a likely stray label, naming its row.
    """
    if task not in CLASS_TASKS or not classes or not records:
        return []
    labels = labels_array(records, task, len(classes))
    member = labels > 0 if task == "multilabel" else labels[:, None] == np.arange(len(classes))
    split_of = np.asarray([r.split or "" for r in records])
    present = [s for s in SPLITS if (split_of == s).any()]
    kind, what = ("label", "positives") if task == "multilabel" else ("class", "samples")
    out: list[Problem] = []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(member[:, i])
        if idx.size == 0:
            folder = Path(root) / c
            where = f" (folder {folder} is empty)" if root and folder.is_dir() else ""
            out.append(warning(f"{kind} {c!r} has no {'positive ' if kind == 'label' else ''}samples{where}"))
            continue
        rows = _rows([records[j] for j in idx])
        if idx.size < 2 and not explicit and task != "multilabel":
            value = "label value" if records[idx[0]].meta.get("row") is not None else "class folder"
            out.append(
                warning(
                    f"class {c!r} has a single sample ({rows}): a stray {value}? Without classes= every "
                    f"{value} becomes a class; fix it, or name the classes with classes="
                )
            )
            continue
        for s in present:
            if not (split_of[idx] == s).any():
                out.append(
                    warning(
                        f"{kind} {c!r} has no {what} in split {s} (its metrics there are undefined); "
                        f"its {idx.size} {what}: {rows}"
                    )
                )
    return out
