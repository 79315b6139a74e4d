"""Turn pip's installation report (``pip install --dry-run --report``) into constraints.txt.

``make lock`` runs it. Every package pip would install becomes ``name==version``, except the
project itself, and carries a marker naming the interpreter and platform it was resolved on:
elsewhere (another Python, macOS) the line does not apply and the install floats within
pyproject.toml's bounds instead of failing on a wheel that does not exist there.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HEADER = """\
# The versions `make test` and `make demo` install (pip install -c constraints.txt -e '.[dev,demo]'):
# what pip resolved from pyproject.toml on {where}. Made by `make lock`;
# refresh it with `make lock` after changing a dependency, not by hand.
"""


def normalize(name: str) -> str:
    """The PEP 503 form of a project name (Pillow, pillow and PIL-low are one project)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(report: dict, project: str = "radprobe") -> str:
    """The constraints file for one pip installation report."""
    env = report["environment"]
    marker = (
        f'python_version == "{env["python_version"]}" and sys_platform == "{env["sys_platform"]}" '
        f'and platform_machine == "{env["platform_machine"]}"'
    )
    python = f"{env['implementation_name']} {env['python_version']}"
    where = f"{python}, {env['sys_platform']} {env['platform_machine']}"
    pins = sorted(
        (normalize(item["metadata"]["name"]), item["metadata"]["version"])
        for item in report["install"]
        if normalize(item["metadata"]["name"]) != project
    )
    return HEADER.format(where=where) + "".join(f"{n}=={v} ; {marker}\n" for n, v in pins)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: lock.py PIP_REPORT.json > constraints.txt", file=sys.stderr)
        return 2
    sys.stdout.write(constraints(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
