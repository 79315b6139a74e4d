"""Dataset spec strings: ``scheme:path?key=value&key=value`` plus an optional YAML sidecar.

Forms (see :data:`SPEC_FORMS`)::

    synthetic:<name>          generated test data (radprobe.data.synthetic)
    folder:<dir>              class subfolders of images; or <dir>/{train,val,test}/<class>/;
                              or <dir>/images + <dir>/masks (segmentation)
    csv:<file> / parquet:<file>   a manifest table, one row per sample
    npz:<file>                MedMNIST-style arrays: train_images/train_labels/val_*/test_*
    nifti:<dir>               class subfolders of .nii/.nii.gz volumes; or images/ + masks/ (or labels/,
                              imagesTr/ + labelsTr/) for segmentation
    dicom:<dir>               class subfolders of DICOM files (2D) or of series folders (3D)
    <path>                    auto-detected: .csv/.tsv -> csv, .parquet -> parquet, .npz -> npz,
                              a folder -> nifti / dicom / folder by the files it holds
    <preset>:<root_dir>       a public dataset in its published layout (nih-cxr14, chexpert, sars-cov-2-ct,
                              brain-tumor-mri, montgomery, shenzhen, btcv, amos, msd, medmnist); each
                              preset has its own options, see ``describe_dataset(<preset>)``

Options come from a YAML sidecar (``radprobe.yaml`` inside a dataset folder, ``<stem>.radprobe.yaml``
beside a manifest or npz file) and are overridden by the query suffix. Lists are comma-separated
in the query (``label=Effusion,Edema``) and may be YAML lists in the sidecar. Values are
percent-decoded (write ``%26`` for ``&``). Options:

    name=<str>            dataset name (default: the folder or file stem)
    task=binary|multiclass|multilabel|segmentation   (default: inferred)
    classes=a,b,c         class names in index order (default: sorted, a "normal"-like class first
                          for binary data; for segmentation the mask index names)
    modality=<str>        xray, ct, mri, ... (informational)
    window=<c>,<w>|<preset>  intensity window, center/width in stored units after DICOM rescale
                          (HU for CT); presets: brain, soft, lung, bone, mediastinum, liver
    norm=auto|dtype|minmax|percentile   intensity scaling when no window is given (readers.py)
    bits=<n>              integer images are divided by 2**n - 1 (e.g. 12-bit data in 16-bit PNGs)
    channel=<i>           volume of a 4D NIfTI to read (default 0)
    axis=0|1|2            slicing axis of volumes (canonical RAS+ axes, stored axes with orient=stored;
                          default 2 = axial)
    orient=canonical|stored  NIfTI: reorient to RAS+ display planes (default), or slice the stored array
    slices=1              turn each volume into 2D samples, one per slice along ``axis``
    patient_re=<regex>    derive the patient id from the file name (first group, else the whole match)
    mask_values=0,128,255 mask pixel values that map to class indices 0, 1, 2, ...
    mask_classes=a,b,c    a labelled manifest whose rows also name masks: the mask classes in index
                          order; the dataset then serves classification and segmentation protocols
    pad=<n>               zero-pad 2D images centrally to n x n (MedMNIST+ convention; never resizes)
    allow_outside_root=1  read files that resolve (``..``, absolute paths, symlinks) outside the dataset
                          root; off by default, so a manifest cannot make radprobe read arbitrary files
  manifests only:
    path=<col>            image path column (default: path, image, image_path, filepath, file, filename)
    mask=<col>            mask path column (default: mask, mask_path, segmentation, seg); present ->
                          segmentation
    id=<col>              sample id column (default: sample_id, id; else the image path)
    label=<col>[,<col>..] one column: binary/multiclass (or multilabel with ``sep``); several 0/1
                          columns: multilabel. Default: ``label``, else every remaining 0/1 column
    sep=<char>            one label column holding several findings, e.g. ``sep=|``
    negative=<value>      with ``sep``: the value meaning "no finding" (all zeros)
    uncertain=zeros|ones  multilabel: map -1 and blank cells to 0 or 1 (CheXpert U-Zeros/U-Ones)
    patient=<col>         patient id column (default: patient_id, patient, PatientID, subject_id,
                          subject); without one every sample is its own patient
    split=<col>           split column (default: split, fold); train/val/test and common aliases
    index=<col>           slice / array index column (for volumes, npz or HDF5 stacks)
    key=<name>            array name inside .h5/.mat files; mask_key=<name> for their masks
    root=<dir>            resolve relative paths against this folder (default: the manifest's folder)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from radprobe.data.presets.registry import PRESETS
from radprobe.errors import DataError
from radprobe.utils import load_yaml

SCHEMES = ("synthetic", "folder", "csv", "parquet", "npz", "nifti", "dicom")
SPEC_FORMS = (
    "synthetic:<name>",
    "folder:<dir>",
    "csv:<file>",
    "parquet:<file>",
    "npz:<file>",
    "nifti:<dir>",
    "dicom:<dir>",
    *(f"{p}:<root_dir>" for p in PRESETS),
    "or an existing path (auto-detected)",
)

COMMON_OPTIONS = frozenset(
    {
        "name",
        "task",
        "classes",
        "modality",
        "window",
        "norm",
        "bits",
        "channel",
        "axis",
        "orient",
        "slices",
        "patient_re",
        "mask_values",
        "pad",
        "allow_outside_root",
    }
)
MANIFEST_OPTIONS = frozenset(
    {
        "path",
        "mask",
        "mask_classes",
        "id",
        "label",
        "sep",
        "negative",
        "uncertain",
        "patient",
        "split",
        "index",
        "key",
        "mask_key",
        "root",
    }
)

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "soft": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``scheme`` is resolved (auto-detection done), ``path`` absolute (or the
    synthetic name), ``options`` merged from sidecar and query."""

    text: str
    scheme: str
    path: str
    options: dict[str, str] = field(default_factory=dict)


def _forms() -> str:
    return ", ".join(SPEC_FORMS)


def parse_query(query: str, spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise DataError(f"dataset spec {spec!r}: option {part!r} is not key=value")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _sidecar_path(path: Path) -> Path:
    if path.is_dir():
        return path / "radprobe.yaml"
    return path.with_name(f"{path.name.split('.')[0]}.radprobe.yaml")


def read_sidecar(path: Path) -> dict[str, str]:
    """Options from the YAML sidecar of a dataset folder or file, as query-style strings."""
    side = _sidecar_path(path)
    if not side.is_file():
        return {}
    import yaml

    try:
        data = load_yaml(side.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read dataset sidecar {side}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"dataset sidecar {side}: expected a mapping of options, got {type(data).__name__}")
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, (list, tuple)):
            out[str(key)] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            out[str(key)] = "1" if value else "0"
        else:
            out[str(key)] = str(value)
    return out


def _detect(path: Path) -> str:
    """Format of an existing path, from its suffix or (for folders) the files it holds."""
    name = path.name.lower()
    if path.is_file():
        for suffix, scheme in TABLE_SUFFIXES.items():
            if name.endswith(suffix):
                return scheme
        if name.endswith(".npz"):
            return "npz"
        raise DataError(
            f"cannot tell the dataset format of {path}: expected a .csv/.tsv/.parquet manifest, an .npz "
            f"file or a folder; valid specs: {_forms()}"
        )
    nifti = dicom = False
    for i, f in enumerate(p for p in path.rglob("*") if p.is_file()):
        low = f.name.lower()
        nifti |= low.endswith(NIFTI_SUFFIXES)
        dicom |= low.endswith((".dcm", ".dicom"))
        if i > 2000 or nifti:
            break
    return "nifti" if nifti else "dicom" if dicom else "folder"


def parse_spec(spec: str) -> Spec:
    """Split ``spec`` into scheme, path and options; raise :class:`DataError` for unknown or missing."""
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty dataset spec; expected one of {_forms()}")
    text = spec.strip()
    body, query = text, ""
    if "?" in text:
        head, _, tail = text.rpartition("?")
        if "=" in tail:
            body, query = head, tail
    options = parse_query(query, text)
    m = re.match(r"^([A-Za-z][A-Za-z0-9_-]*):(.*)$", body)
    # One-letter "schemes" are Windows drive letters.
    if m and len(m.group(1)) > 1:
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme not in SCHEMES and scheme not in PRESETS:
            raise DataError(f"unknown dataset scheme {m.group(1)!r} in {text!r}; expected one of {_forms()}")
        if scheme == "synthetic":
            return Spec(text, scheme, rest, options)
        path = Path(rest).expanduser()
        if scheme in PRESETS:
            return _preset_spec(text, scheme, path, options)
        if not path.exists():
            raise DataError(f"dataset path not found: {path} (from {text!r})")
    else:
        path = Path(body).expanduser()
        if not path.exists():
            raise DataError(f"dataset path not found: {path}; expected an existing path or one of {_forms()}")
        scheme = _detect(path)
    path = path.resolve()
    want_dir = scheme in ("folder", "nifti", "dicom")
    if want_dir != path.is_dir():
        kind = "a folder" if want_dir else "a file"
        raise DataError(f"dataset spec {text!r}: {scheme}: expects {kind}, got {path}")
    merged = {**read_sidecar(path), **options}
    validate_options(scheme, merged, text)
    return Spec(text, scheme, str(path), merged)


def _preset_spec(text: str, scheme: str, path: Path, options: dict[str, str]) -> Spec:
    info = PRESETS[scheme]
    if not path.exists():
        raise DataError(
            f"{scheme}: dataset not found at {path}; download it from {info.url} and point the spec at "
            f"the folder laid out as {info.layout.split(';')[0]}"
        )
    path = path.resolve()
    merged = {**read_sidecar(path), **options}
    validate_options(scheme, merged, text)
    return Spec(text, scheme, str(path), merged)


def validate_options(scheme: str, options: dict[str, str], text: str) -> None:
    """Raise for options the scheme does not understand, listing the valid ones."""
    if scheme in PRESETS:
        allowed = PRESETS[scheme].allowed_options()
    else:
        allowed = COMMON_OPTIONS | (MANIFEST_OPTIONS if scheme in ("csv", "parquet") else frozenset())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DataError(
            f"dataset spec {text!r}: unknown option(s) {', '.join(unknown)} for {scheme}; "
            f"valid: {', '.join(sorted(allowed))}"
        )


def opt_list(value: str | None) -> list[str]:
    """Comma-separated option value as a list of stripped non-empty strings."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def opt_window(value: str | None) -> tuple[float, float] | None:
    """``"40,400"`` or a preset name -> (center, width)."""
    if not value:
        return None
    if value.lower() in WINDOW_PRESETS:
        return WINDOW_PRESETS[value.lower()]
    parts = opt_list(value)
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise DataError(
            f"window={value!r}: expected <center>,<width> (e.g. 40,400) or one of {', '.join(WINDOW_PRESETS)}"
        ) from None
    if width <= 0:
        raise DataError(f"window={value!r}: width must be positive")
    return center, width


def opt_int(options: dict[str, str], key: str, default: int | None = None) -> int | None:
    value = options.get(key)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise DataError(f"option {key}={value!r}: expected an integer") from None


def opt_bool(options: dict[str, str], key: str) -> bool:
    return options.get(key, "").strip().lower() in ("1", "true", "yes", "on")


def opt_any(options: dict[str, Any], key: str) -> str | None:
    value = options.get(key)
    return None if value in (None, "") else str(value)
