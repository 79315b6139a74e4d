"""Run every ``bench_*.py`` here and write one JSON per bench to bench/results/."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from common import write_result  # noqa: E402


def main(names: list[str]) -> None:
    benches = sorted(p.stem for p in HERE.glob("bench_*.py"))
    for name in names or benches:
        mod = importlib.import_module(name)
        print(f"running {name} ...", flush=True)
        out = write_result(name.removeprefix("bench_"), mod.main())
        print(f"  → {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
