"""radprobe: measure how well vision foundation models serve radiology.

The Python surface: :func:`evaluate`, :func:`results` and :func:`run_study` (see :mod:`radprobe.api`).
They load lazily, so ``import radprobe`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "results", "run_study"]

if TYPE_CHECKING:
    from radprobe.api import evaluate, results, run_study


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "results", "run_study"):
        from radprobe import api

        return getattr(api, name)
    raise AttributeError(f"module 'radprobe' has no attribute {name!r}")
