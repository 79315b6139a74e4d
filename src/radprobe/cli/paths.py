"""Output paths checked before any work: a directory that cannot be made, or a file that cannot be
written, is one line naming the flag, not a traceback after the features are extracted."""

from __future__ import annotations

from pathlib import Path

from radprobe.errors import RadprobeError


def writable_dir(path: Path, flag: str) -> None:
    """One line when ``path`` cannot become a directory: it, or a folder above it, is a file."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "exists and is not a directory" if p == path else f"{p} is a file, not a directory"
                raise RadprobeError(f"{flag} {path}: {what}")
            return


def writable_file(path: Path, flag: str) -> None:
    """One line when ``path`` cannot be written as a file: it is a directory, or a folder above it is
    a file."""
    if path.is_dir():
        raise RadprobeError(f"{flag} {path}: is a directory; expected a file name")
    for p in path.parents:
        if p.exists():
            if not p.is_dir():
                raise RadprobeError(f"{flag} {path}: {p} is a file, not a directory")
            return
