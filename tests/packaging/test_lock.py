"""constraints.txt pins what `make install` installs, within pyproject.toml's bounds."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
PIN = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]*)==(?P<version>[^\s;]+) ; (?P<marker>.+)$")
# Libraries whose next major (typer: minor) release is known to move an API radprobe uses.
BOUNDED = ("typer", "timm", "peft", "transformers")


def _pins() -> dict[str, tuple[str, str]]:
    pins: dict[str, tuple[str, str]] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"not a pin: {line!r}"
        assert m["name"] not in pins, f"pinned twice: {m['name']}"
        pins[m["name"]] = (m["version"], m["marker"])
    return pins


def _requirements() -> list[Requirement]:
    """pyproject.toml's dependencies plus the extras `make install` takes (dev, demo)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["dev"], *extras["demo"]]]


def _lock_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_script", ROOT / ".ci" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_is_sorted_pins_without_the_project() -> None:
    pins = _pins()
    assert list(pins) == sorted(pins) and "radprobe" not in pins
    assert len({marker for _, marker in pins.values()}) == 1  # resolved once, for one platform


def test_every_dependency_is_pinned_within_its_bounds() -> None:
    """A dependency added to pyproject.toml without `make lock`, or a bound the pin breaks, fails."""
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{name}=={pins[name][0]} vs {req}"


def test_apis_that_move_have_upper_bounds() -> None:
    specs = {canonicalize_name(r.name): r.specifier for r in _requirements()}
    for name in BOUNDED:
        assert any(s.operator == "<" for s in specs[name]), f"{name} needs an upper bound"


def test_lock_keeps_within_this_machines_pip_caps() -> None:
    """Where pip is capped to the torch releases on local disk, the lock pins those releases."""
    caps = Path("/etc/xdg/pip/constraints.txt")
    pins = _pins()
    assert {"torch", "torchvision"} <= set(pins)
    if not caps.is_file():
        pytest.skip("no pip caps on this machine")
    for line in caps.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name in pins and req.specifier.contains(pins[name][0]), f"{name}: {req} vs lock"


def test_the_environment_make_installed_is_the_locked_one() -> None:
    """Runs where `make install` made this environment from the current lock (CI does)."""
    stamp = Path(sys.prefix) / ".radprobe-installed"  # `make install` copies the lock there
    if not stamp.is_file() or stamp.read_text() != LOCK.read_text():
        pytest.skip("this environment was not installed from the current constraints.txt")
    wrong = {}
    for name, (version, marker) in _pins().items():
        if not Marker(marker).evaluate():
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not SpecifierSet(f"=={version}").contains(installed, prereleases=True):  # 2.14.1 = 2.14.1+cu130
            wrong[name] = (installed, version)
    assert wrong == {}


def test_lock_script_turns_a_pip_report_into_pins() -> None:
    env = {"implementation_name": "cpython", "python_version": "3.11", "sys_platform": "linux"}
    env["platform_machine"] = "x86_64"

    def item(name: str, version: str) -> dict:
        return {"metadata": {"name": name, "version": version}}

    report = {"environment": env, "install": [item("radprobe", "0.1.0"), item("PyYAML", "6.0.4")]}
    report["install"].append(item("annotated_types", "0.8.0"))
    text = _lock_script().constraints(report)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    marker = 'python_version == "3.11" and sys_platform == "linux" and platform_machine == "x86_64"'
    assert lines == [f"annotated-types==0.8.0 ; {marker}", f"pyyaml==6.0.4 ; {marker}"]


def test_makefile_installs_from_the_lock_and_reinstalls_when_it_changes() -> None:
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK := constraints\.txt$", text, re.M)
    assert re.search(r"^\$\(STAMP\): .*\$\(LOCK\)", text, re.M)
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-B", "install", "lock"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "pip install --quiet -c constraints.txt -e '.[dev,demo]'" in dry.stdout
    assert ".ci/lock.py" in dry.stdout
