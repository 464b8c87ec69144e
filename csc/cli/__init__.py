"""The ``csc`` command line. Each command group lives in its own module with a ``register(app)``.

Heavy libraries (torch, transformers, dspy) are imported inside commands, so ``csc --help`` stays
fast.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer 0.2x vendors its own copy of click; its contexts and exceptions are those
    from typer._click import exceptions as click_exceptions
    from typer._click.core import Context
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import Context, get_current_context
    from click import exceptions as click_exceptions

from csc import __version__
from csc.data import errors

# Old flag names that still work, per command: they are rewritten to the current name with a
# note on stderr, and hidden from --help. One vocabulary across commands: --from / --to for
# formats, --lang, --concurrency, -n plus a long name for the count a command generates.
DEPRECATED_FLAGS: dict[tuple[str, ...], dict[str, str]] = {
    ("synthesize",): {"--format": "--to", "--language": "--lang"},
    ("profiles", "generate"): {"--n": "--profiles", "--language": "--lang"},
    ("profiles", "show"): {"--language": "--lang"},
    ("evaluate",): {"--format": "--from", "--num-threads": "--concurrency"},
    ("compare",): {"--format": "--from", "--num-threads": "--concurrency"},
    ("optimize",): {"--num-threads": "--concurrency"},
    ("finetune", "export"): {"--format": "--from"},
    ("data", "validate"): {"--format": "--from"},
    ("stats",): {"--format": "--from"},
}


def rewrite_deprecated_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` with deprecated flag names replaced, and one note per replaced name."""
    path = tuple(a for a in args[:2] if not a.startswith("-"))
    renames = DEPRECATED_FLAGS.get(path) or DEPRECATED_FLAGS.get(path[:1]) or {}
    out, notes = [], []
    for i, arg in enumerate(args):
        if arg == "--":  # everything after is an argument, not an option
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if name in renames:
            new = renames[name]
            note = f"note: {name} is deprecated; use {new}"
            if note not in notes:
                notes.append(note)
            arg = new + eq + value
        out.append(arg)
    return out, notes


def _command_flags() -> set[str] | None:
    """Option names of the running command, so data errors suggest only flags it has."""
    ctx = get_current_context(silent=True)
    if ctx is None:
        return None
    return {
        opt
        for param in ctx.command.params
        if getattr(param, "param_type_name", "") == "option" and not getattr(param, "hidden", False)
        for opt in (*param.opts, *param.secondary_opts)
    }


errors.available_flags = _command_flags


# Exceptions that are the CLI's own way out (usage errors, typer.Exit): never rewrapped.
_CLI_EXITS: tuple[type[BaseException], ...] = tuple(
    {typer.Exit, typer.Abort}
    | {
        cls
        for name in ("ClickException", "Exit", "Abort")
        if isinstance(cls := getattr(click_exceptions, name, None), type)
    }
)


class CscGroup(TyperGroup):
    """The top-level command group: any exception a command did not turn into a clean error
    still ends as one line on stderr with exit code 1, never a traceback (``CSC_DEBUG=1`` shows
    it). An ``OSError`` names its file, as most are a path the user gave (unwritable, a folder).
    """

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        args, notes = rewrite_deprecated_flags(list(args))
        for note in notes:
            typer.secho(note, fg="yellow", err=True)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except _CLI_EXITS:
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


# Each command group lives in a module of this package that defines register(app).
for _module in pkgutil.iter_modules(__path__):
    _commands = importlib.import_module(f"{__name__}.{_module.name}")
    if hasattr(_commands, "register"):
        _commands.register(app)


def main() -> None:
    """Entry point of the ``csc`` console script."""
    app()
