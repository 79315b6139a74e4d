"""Executors run groups of study jobs. Jobs never know which executor runs them.

``LocalExecutor`` runs groups one after another in this process. Executors for torchrun (one
group per rank) and Ray (one group per task) implement the same ``map``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Executor(Protocol):
    """Runs ``fn`` over items and returns the results in order."""

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]: ...


class LocalExecutor:
    """Sequential, in-process: the model of a group is loaded once and reused by all its jobs."""

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        return [fn(x) for x in items]
