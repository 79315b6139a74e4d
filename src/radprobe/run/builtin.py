"""Built-in studies, addressed as ``builtin:<name>``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def quickstart() -> dict[str, Any]:
    """Two test backbones on two synthetic datasets: a seconds-long smoke study."""
    return {
        "name": "quickstart",
        "backbones": ["test:vit-tiny", "test:cnn-tiny"],
        "datasets": ["synthetic:cls2d-binary", "synthetic:cls2d-multiclass"],
        "protocols": {"knn": {}, "logreg": {"cs": [0.01, 0.1, 1.0, 10.0]}, "linear": {"min_iterations": 100}},
        "seeds": [0, 1],
        "bootstrap": 200,
    }


BUILTINS: dict[str, Callable[[], dict[str, Any]]] = {"quickstart": quickstart}
