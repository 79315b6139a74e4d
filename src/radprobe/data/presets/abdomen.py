"""3D NIfTI segmentation presets: BTCV, AMOS and the Medical Segmentation Decathlon."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from radprobe.data.formats.common import Source, axis_option
from radprobe.data.presets.common import finish, root_dir
from radprobe.data.presets.paper_splits import amos_split, btcv_split, heart_split, wants_paper_split
from radprobe.data.presets.registry import BTCV_ORGANS
from radprobe.data.problems import Problem, error, warning
from radprobe.data.readers import NIFTI_SUFFIXES, natural_key, strip_suffix
from radprobe.data.records import ImageRef, Record
from radprobe.data.spec import Spec, opt_int
from radprobe.errors import DataError

BTCV_JSONS = ("dataset_0.json", "dataset.json")
JSON_SPLITS = (("training", "train"), ("validation", "val"))


def load_json(path: Path, scheme: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{scheme}: missing {path.name} in {path.parent}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{scheme}: cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{scheme}: {path} is not a JSON object")
    return data


def json_classes(data: dict[str, Any], path: Path, scheme: str) -> tuple[str, ...]:
    """Class names from a ``labels`` mapping ``{"0": "background", "1": ...}``; values must be 0..K."""
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f'{scheme}: {path.name} has no \'labels\' mapping (e.g. {{"0": "background", ...}})')
    try:
        by_value = {int(k): str(v) for k, v in labels.items()}
    except ValueError:
        raise DataError(f"{scheme}: {path.name} 'labels' keys must be integers, got {list(labels)}") from None
    if sorted(by_value) != list(range(len(by_value))):
        raise DataError(
            f"{scheme}: {path.name} 'labels' values {sorted(by_value)} are not 0..{len(by_value) - 1}"
        )
    return tuple(by_value[i] for i in range(len(by_value)))


def _nifti_files(d: Path) -> list[Path]:
    files = [p for p in d.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)]
    return sorted((p for p in files if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def _case_number(name: str) -> str | None:
    nums = re.findall(r"\d+", strip_suffix(name))
    return str(int(nums[-1])) if nums else None


def _record(img: Path, lab: Path, axis: int, split: str | None) -> Record:
    sid = strip_suffix(img.name)
    return Record(
        sid, sid, ImageRef(str(img), "nifti", axis=axis), None, ImageRef(str(lab), "nifti", axis=axis), split
    )


def pair_by_number(img_dir: Path, lab_dir: Path, axis: int, issues: list[Problem]) -> list[Record]:
    """Pair ``img0001.nii.gz`` with ``label0001.nii.gz`` (any prefixes) by case number."""
    labels = {_case_number(p.name): p for p in _nifti_files(lab_dir)}
    records, used = [], set()
    for img in _nifti_files(img_dir):
        key = _case_number(img.name)
        lab = labels.get(key)
        if lab is None:
            issues.append(error(f"no label for image {img} in {lab_dir} (case number {key})"))
            continue
        used.add(key)
        records.append(_record(img, lab, axis, None))
    for key, lab in labels.items():
        if key not in used:
            issues.append(warning(f"label {lab} has no image in {img_dir}"))
    return records


def json_records(
    root: Path,
    data: dict[str, Any],
    path: Path,
    axis: int,
    issues: list[Problem],
    scheme: str,
    keep: Any = None,
) -> list[Record]:
    """Records from a dataset json's ``training`` / ``validation`` lists of {image, label} entries."""
    records = []
    if not isinstance(data.get("training"), list):
        raise DataError(f'{scheme}: {path.name} has no \'training\' list of {{"image", "label"}} entries')
    for key, split in JSON_SPLITS:
        entries = data.get(key) or []
        for i, entry in enumerate(entries):
            where = f"{path.name} {key}[{i}]"
            if not isinstance(entry, dict) or not entry.get("image") or not entry.get("label"):
                issues.append(error(f'{where}: expected {{"image": ..., "label": ...}}, got {entry!r}'))
                continue
            img, lab = root / entry["image"], root / entry["label"]
            if keep is not None and not keep(img):
                continue
            missing = [p for p in (img, lab) if not p.is_file()]
            if missing:
                issues.append(error(f"{where}: file not found: {', '.join(str(p) for p in missing)}"))
                continue
            records.append(_record(img.resolve(), lab.resolve(), axis, split))
    if not any(r.split == "val" for r in records):
        records = [Record(r.sample_id, r.patient_id, r.image, r.label, r.mask, None) for r in records]
    return records


# ---------------------------------------------------------------------------- BTCV


def index_btcv(spec: Spec) -> Source:
    root = root_dir(spec)
    scheme = spec.scheme
    axis = axis_option(spec.options)
    issues: list[Problem] = []
    classes = ("background", *BTCV_ORGANS)
    jpath = next((root / n for n in BTCV_JSONS if (root / n).is_file()), None)
    raw = next(
        (
            b
            for b in (root / "RawData" / "Training", root / "Training", root)
            if (b / "img").is_dir() and (b / "label").is_dir()
        ),
        None,
    )
    if raw is not None:
        records = pair_by_number(raw / "img", raw / "label", axis, issues)
        layout = "RawData/Training img/ + label/"
    elif (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir():
        if jpath is not None:
            data = load_json(jpath, scheme)
            records = json_records(root, data, jpath, axis, issues, scheme)
            if "labels" in data:
                classes = json_classes(data, jpath, scheme)
            layout = f"imagesTr/ + labelsTr/ listed in {jpath.name}"
        else:
            records = pair_by_number(root / "imagesTr", root / "labelsTr", axis, issues)
            layout = "imagesTr/ + labelsTr/"
    else:
        raise DataError(
            f"{scheme}: no BTCV layout in {root}; expected RawData/Training/img/ + label/ (img00XX.nii.gz, "
            "label00XX.nii.gz) or imagesTr/ + labelsTr/ (with dataset_0.json or dataset.json)"
        )
    if len(classes) != 14:
        issues.append(warning(f"{scheme}: {len(classes) - 1} foreground labels; BTCV has 13 organs"))
    conventions = {"layout": layout}
    if wants_paper_split(spec):
        records = btcv_split(records, str(root))
        conventions["split"] = (
            "paper: train = even-numbered volumes, test = odd-numbered; val carved from train"
        )
    return finish(
        spec, records, "segmentation", classes, root, issues, conventions,
        default_name="btcv", patients_allowed=not any(r.split for r in records), modality="ct",
    )  # fmt: skip


# ---------------------------------------------------------------------------- AMOS

AMOS_MRI_FROM = 501  # AMOS case ids up to 0500 are CT, above MRI (as nnU-Net's AMOS conversion)


def index_amos(spec: Spec) -> Source:
    root = root_dir(spec)
    scheme = spec.scheme
    axis = axis_option(spec.options)
    subset = (spec.options.get("subset") or "ct").strip().lower()
    if subset not in ("ct", "mri", "all"):
        raise DataError(f"subset={subset!r}: expected ct, mri or all")
    jpath = root / "dataset.json"
    data = load_json(jpath, scheme)
    classes = json_classes(data, jpath, scheme)

    def keep(img: Path) -> bool:
        num = _case_number(img.name)
        is_mri = num is not None and int(num) >= AMOS_MRI_FROM
        return subset == "all" or (subset == "mri") == is_mri

    issues: list[Problem] = []
    records = json_records(root, data, jpath, axis, issues, scheme, keep=keep)
    if len(classes) != 16:
        issues.append(warning(f"{scheme}: {jpath.name} names {len(classes) - 1} organs; AMOS has 15"))
    modality = {"ct": "ct", "mri": "mri", "all": "ct+mri"}[subset]
    conventions = {"subset": subset}
    if wants_paper_split(spec):
        if subset != "ct":
            raise DataError(f"{scheme}: split=paper uses the CT volumes (subset=ct); got subset={subset}")
        records = amos_split(records, _listed(data, keep), f"{jpath}")
        conventions["split"] = "paper: 80 / 20 / 50 CT volumes by position; the other 150 left out"
    return finish(
        spec, records, "segmentation", classes, root, issues, conventions,
        default_name="amos", modality=modality,
    )  # fmt: skip


def _listed(data: dict[str, Any], keep: Any) -> list[str]:
    """Sample ids of the labelled cases ``keep`` accepts in a dataset json (training + validation)."""
    entries = [
        e for key, _ in JSON_SPLITS for e in data.get(key) or [] if isinstance(e, dict) and e.get("image")
    ]
    return [strip_suffix(Path(e["image"]).name) for e in entries if keep(Path(e["image"]))]


# ---------------------------------------------------------------------------- MSD


def msd_task_dir(root: Path, task: str | None) -> Path:
    """The TaskNN_Name folder: ``root`` itself when it holds dataset.json, else chosen by ``task=``."""
    if (root / "dataset.json").is_file() and not task:
        return root
    tasks = sorted(d for d in root.iterdir() if d.is_dir() and re.match(r"Task\d+_", d.name))
    if not task:
        if not tasks:
            raise DataError(
                f"msd: missing dataset.json in {root}; point at a TaskNN_Name folder of the Decathlon"
            )
        raise DataError(
            f"msd: {root} holds several tasks ({', '.join(d.name for d in tasks)}); choose one with task="
        )
    t = task.strip().lower()
    for d in tasks:
        num, _, name = d.name[4:].partition("_")
        if t in (name.lower(), d.name.lower()) or (t.isdigit() and int(t) == int(num)):
            return d
    if (root / "dataset.json").is_file():
        return root
    raise DataError(f"msd: no task {task!r} in {root} (found: {', '.join(d.name for d in tasks) or 'none'})")


def index_msd(spec: Spec) -> Source:
    root = msd_task_dir(root_dir(spec), spec.options.get("task"))
    scheme = spec.scheme
    axis = axis_option(spec.options)
    jpath = root / "dataset.json"
    data = load_json(jpath, scheme)
    classes = json_classes(data, jpath, scheme)
    modalities = data.get("modality") or {}
    channel = opt_int(spec.options, "channel", 0) or 0
    if isinstance(modalities, dict) and modalities and str(channel) not in modalities:
        raise DataError(f"msd: channel={channel} but {jpath.name} lists modalities {modalities}")
    modality = str(modalities.get(str(channel), "")) if isinstance(modalities, dict) else ""
    issues: list[Problem] = []
    records = json_records(root, data, jpath, axis, issues, scheme)
    conventions = {"task": root.name, "modality": modality or "unknown"}
    paper = wants_paper_split(spec)
    if paper:
        records = _msd_paper_split(records, root, data, issues)
        conventions["split"] = "paper: 12 / 4 / 4 volumes, inferred (the released code has no Heart split)"
    return finish(
        spec, records, "segmentation", classes, root, issues, conventions,
        default_name=f"msd-{root.name}", patients_allowed=not paper, modality=modality.lower(),
    )  # fmt: skip


def _msd_paper_split(
    records: list[Record], root: Path, data: dict[str, Any], issues: list[Problem]
) -> list[Record]:
    """The paper's Task02_Heart split (the only MSD task it used), with a warning that it is inferred."""
    heart = root.name.lower().startswith("task02_") or str(data.get("name", "")).lower() == "leftatrium"
    if not heart:
        raise DataError(
            f"msd: split=paper exists for Task02_Heart only (the paper's MSD task); got {root.name}. "
            "Add split= to use radprobe's carve"
        )
    issues.append(
        warning(
            "msd split=paper: the released code holds no Task02_Heart split; radprobe uses the "
            "12 / 4 / 4 inferred from its slice counts (docs/paper-fidelity.md, Datasets)"
        )
    )
    return heart_split(records, str(root))
