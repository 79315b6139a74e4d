"""Embedded SQLite results store: one row per (evaluation, metric)."""

from radprobe.results.store import COLUMNS, ResultRow, ResultStore

__all__ = ["COLUMNS", "ResultRow", "ResultStore"]
