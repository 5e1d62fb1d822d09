"""The `biomatch` command line: one typer app, commands contributed by area modules.

Each module in biomatch.commands has `register(app)`; they import heavy libraries inside
their commands so that `biomatch --help` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from biomatch.commands import AREAS
from biomatch.errors import BiomatchError

app = typer.Typer(
    name="biomatch",
    help="Biometric matching with learned embeddings: hands, palmprints, faces, unlock, look-alikes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _register in AREAS:
    _register(app)


def main() -> None:
    """Entry point: run the app and turn biomatch errors into one clear line and exit code 2."""
    try:
        app(standalone_mode=False)
    except BiomatchError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
