"""Shared fixtures: every test gets its own cache directory and no network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``RADPROBE_MAX_SKIPS`` set (CI sets it), more skipped tests than that fail the run: a skip
    hides what it would have tested, so a new one must be noticed, not scrolled past."""
    import os

    allowance = os.environ.get("RADPROBE_MAX_SKIPS")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if allowance is None or reporter is None:
        return
    skipped = len(reporter.stats.get("skipped", []))
    if skipped > int(allowance) and session.exitstatus == 0:
        reporter.write_line(f"{skipped} tests skipped, more than RADPROBE_MAX_SKIPS={allowance}", red=True)
        session.exitstatus = 1
