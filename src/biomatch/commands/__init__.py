"""CLI command modules, one per area; each exposes `register(app)`."""

from __future__ import annotations

from collections.abc import Callable

import typer

from biomatch.commands import gallery, hands, verification, workbench

AREAS: list[Callable[[typer.Typer], None]] = [
    hands.register,
    verification.register,
    gallery.register,
    workbench.register,
    __import__("biomatch.commands.faces", fromlist=["register"]).register,  # export, calibrate
]


def register_version(app: typer.Typer) -> None:
    """`biomatch version`: print the package version."""

    @app.command()
    def version() -> None:
        """Print the biomatch version."""
        from biomatch import __version__

        typer.echo(__version__)


AREAS.append(register_version)
