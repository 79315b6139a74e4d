"""DICOM specifics of folder indexing: which folders are one series, and the PatientID tag."""

from __future__ import annotations

from pathlib import Path

from radprobe.data.readers import dicom_header
from radprobe.errors import DataError


def is_series(files: list[Path]) -> bool:
    """A folder holds one DICOM series (a 3D sample) rather than separate 2D images."""
    if len(files) < 2:
        return False
    try:
        heads = [dicom_header(str(f)) for f in (files[0], files[-1])]
    except DataError:
        return False
    uids = {str(getattr(h, "SeriesInstanceUID", "")) for h in heads}
    return len(uids) == 1 and "" not in uids and all(hasattr(h, "ImagePositionPatient") for h in heads)


def series_patient(path: Path, kind: str) -> str | None:
    """PatientID of a DICOM file or of the first file of a series folder; None if absent or unreadable."""
    head = path if kind == "dicom" else next(iter(sorted(x for x in path.iterdir() if x.is_file())), path)
    try:
        return str(getattr(dicom_header(str(head)), "PatientID", "") or "") or None
    except DataError:
        return None  # unreadable: check_dataset reports it
