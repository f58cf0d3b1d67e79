"""`meshkit node` commands (being written)."""

from __future__ import annotations

import typer

node_app = typer.Typer(name="node", help="Cluster membership: init, join, ls, promote...")
