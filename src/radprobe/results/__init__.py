"""Results: rows built by one recipe (:mod:`.rows`), kept in a SQLite store (:mod:`.store`).

``radprobe.results(run_dir)`` reads a run directory's rows as a DataFrame. This package shares that
name, and importing a submodule binds the package to ``radprobe.results``, so the package itself is
callable: both spellings give the same :func:`read_results`.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radprobe.errors import RadprobeError
from radprobe.results.store import COLUMNS, ResultRow, ResultStore

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "ResultRow", "ResultStore", "read_results"]


def read_results(run_dir: str | Path, **where: Any) -> pd.DataFrame:
    """The rows of a run directory as a DataFrame (one row per evaluation and metric); ``where``
    filters on columns, e.g. ``protocol="knn"``."""
    import pandas as pd

    path = Path(run_dir)
    if not (path / "results.db").is_file():
        raise RadprobeError(f"{path}: no results.db here; expected a run directory")
    for k in where:
        if k not in COLUMNS:
            raise RadprobeError(f"results(): unknown column {k!r}; expected one of {', '.join(COLUMNS)}")
    with ResultStore(path, create=False) as store:
        return pd.DataFrame(store.rows(**where), columns=COLUMNS)


class _CallablePackage(types.ModuleType):
    def __call__(self, run_dir: str | Path, **where: Any) -> pd.DataFrame:
        return read_results(run_dir, **where)


sys.modules[__name__].__class__ = _CallablePackage
