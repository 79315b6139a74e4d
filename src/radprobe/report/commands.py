"""CLI commands of the report room, attached to the main app by :func:`register`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this room's commands (report, demo, assets) to ``app``."""
