"""The ``csc`` command line. Each command group lives in its own module with a ``register(app)``.

Heavy libraries (torch, transformers, dspy) are imported inside commands, so ``csc --help`` stays
fast.
"""

from __future__ import annotations

import importlib

import typer

from csc import __version__

app = typer.Typer(
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
    "serve",
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
