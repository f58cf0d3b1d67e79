"""`meshkit web` command (being written)."""

from __future__ import annotations

import typer

web_app = typer.Typer()
