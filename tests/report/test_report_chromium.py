"""report.html opens offline in a real browser: headless Chromium renders its tables and decodes every
image. Skipped (with the reason) only where no Chromium is installed; CI installs the Debian package."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from radprobe.report.build import build_report

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Appended to a copy of the page: after load, record what the browser actually rendered.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)).length;
  const tables = [...document.querySelectorAll('table')];
  const m = document.createElement('div');
  m.id = 'rp-check';
  m.setAttribute('data-images', imgs.length);
  m.setAttribute('data-bad', bad);
  m.setAttribute('data-tables', tables.length);
  m.setAttribute('data-rows', document.querySelectorAll('tbody tr').length);
  m.setAttribute('data-narrowest', Math.min(...tables.map(t => t.getBoundingClientRect().width)));
  m.setAttribute('data-badges', document.querySelectorAll('span.pass, span.fail').length);
  document.body.appendChild(m);
});
</script>"""


def _chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def test_report_html_renders_in_headless_chromium(run_dir: Path, tmp_path: Path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); .ci/run installs it")
    rep = build_report(run_dir)
    page = rep.html.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
        probe.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    m = re.search(r'<div id="rp-check"([^>]*)>', proc.stdout)
    assert m, f"probe not found in the DOM (exit {proc.returncode}): {proc.stderr[-500:]}"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', m.group(1)))
    assert int(attrs["images"]) == len(rep.figures) > 0
    assert int(attrs["bad"]) == 0  # every embedded PNG decoded
    assert int(attrs["tables"]) == page.count("<table") >= 10
    assert int(attrs["rows"]) > 50
    assert float(attrs["narrowest"]) > 100  # tables laid out, not collapsed
    assert int(attrs["badges"]) >= 3  # PASS/FAIL badges styled
