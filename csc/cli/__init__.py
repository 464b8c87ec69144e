"""The ``csc`` command line. Each command group lives in its own module with a ``register(app)``.

Heavy libraries (torch, transformers, dspy) are imported inside commands, so ``csc --help`` stays
fast.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click
import typer
from typer.core import TyperGroup

from csc import __version__


class CscGroup(TyperGroup):
    """The top-level command group: any exception a command did not turn into a clean error
    still ends as one line on stderr with exit code 1, never a traceback (``CSC_DEBUG=1`` shows
    it). An ``OSError`` names its file, as most are a path the user gave (unwritable, a folder).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (
            click.exceptions.ClickException,
            click.exceptions.Exit,
            click.exceptions.Abort,
            typer.Exit,
            typer.Abort,
        ):
            raise
        except Exception as exc:
            if os.environ.get("CSC_DEBUG"):
                raise
            from csc.cli.common import fail

            if isinstance(exc, OSError) and exc.filename is not None:
                target = exc.filename2 or exc.filename
                fail(f"{target}: {exc.strerror or exc}")
            fail(
                f"unexpected {type(exc).__name__}: {exc} (a bug in csc; rerun with CSC_DEBUG=1 "
                "for the traceback and report it)"
            )


app = typer.Typer(
    cls=CscGroup,
    name="csc",
    help="Strategy-aligned customer-support conversation with DSPy: synthesize, evaluate, "
    "optimize and fine-tune supporters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Modules under csc.cli that add commands; each defines register(app).
COMMAND_MODULES = [
    "compare",
    "data",
    "evaluate",
    "finetune",
    "framework",
    "lm",
    "optimize",
    "profiles",
    "stats",
    "synthesize",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"csc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """csc: strategy-aligned customer-support conversation with DSPy."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"csc.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the ``csc`` console script."""
    app()
