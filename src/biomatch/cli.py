"""The `biomatch` command line: one typer app, commands contributed by area modules.

Each module in biomatch.commands has `register(app)`; they import heavy libraries inside
their commands so that `biomatch --help` stays fast.

Help is plain click formatting (``rich_markup_mode=None``): rich markup would eat the
``[default: …]`` notes and show flags with ``<bool>`` placeholders. Every failure — a
biomatch error, a usage error (missing argument, ``-k abc``, ``--port 70000``), an unreadable
file — ends as one line ``error: …`` on stderr and exit code 2; user text in messages is
printed literally (never parsed as rich markup).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from biomatch.commands import AREAS
from biomatch.errors import BiomatchError

app = typer.Typer(
    name="biomatch",
    help="Biometric matching with learned embeddings: hands, palmprints, faces, unlock, look-alikes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

for _register in AREAS:
    _register(app)


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """Typer >= 0.2x vendors click as typer._click; older ones use click itself: catch both."""
    found: list[type[BaseException]] = []
    try:
        from typer._click.exceptions import ClickException

        found.append(ClickException)
    except ImportError:  # pragma: no cover - depends on the typer version
        pass
    try:
        import click

        found.append(click.ClickException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` as one line on stderr, without interpreting markup, and exit."""
    from rich.console import Console
    from rich.text import Text

    line = " ".join(str(message).split())  # one line, whatever the message holds
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), line))
    sys.exit(code)


def _abort_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [typer.Abort]
    try:
        import click

        types.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def main() -> None:
    """Entry point: run the app; every error becomes one clear line and exit code 2."""
    try:
        app(standalone_mode=False)
    except BiomatchError as exc:
        fail(str(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _abort_types():
        sys.exit(1)
    except _click_exceptions() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `biomatch users`: help was wanted
            typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else str(exc))  # type: ignore[attr-defined]
            sys.exit(0)
        fail(exc.format_message())  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except OSError as exc:  # a file or folder the user named cannot be read or written
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        fail(f"{exc.strerror or exc}{where}")


if __name__ == "__main__":  # pragma: no cover
    main()
