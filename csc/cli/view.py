"""``csc view``: one self-contained HTML page to read dialogues, runs and evaluations."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    """Add the ``view`` command."""

    @app.command("view", epilog="Example: csc view runs/quickstart --out quickstart.html")
    def view(
        path: Path = typer.Argument(
            ...,
            help="A dialogue file or dataset folder (anything `csc data` reads), a `csc synthesize`"
            " / `csc rewrite` run folder, or a `csc evaluate` / `csc compare` output folder.",
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            help="HTML file to write (default: view.html inside a folder, FILE.html beside a file).",
        ),
        from_format: str | None = typer.Option(
            None,
            "--from",
            help="Input format of a dialogue file: dianjin, jsonl, hf, generic (default: from the "
            "path).",
        ),
        mapping: Path | None = common.MappingOption,
        framework: str | None = typer.Option(
            None,
            "--framework",
            help="csc, esc or a framework YAML (default: the run's or evaluation's, else csc).",
        ),
        lang: Language | None = typer.Option(
            None, "--lang", help="Language of strategy names (default: the data's)."
        ),
        limit: int | None = typer.Option(
            None, "--limit", min=1, help="Read only the first N dialogues (per file of a run)."
        ),
        data: Path | None = typer.Option(
            None,
            "--data",
            help="The evaluated dialogue file, when an evaluation's recorded path has moved.",
        ),
        allow_unlabelled: bool = common.UnlabelledOption,
    ) -> None:
        """Write one HTML page (no server, no network) to read and review dialogues.

        Strategy tags, stage bands and the framework's legend; filters by topic, strategy, kept/rejected, judge criterion and right/wrong; full-text search; review mode with accept/reject per criterion exported as review.json (see `csc review apply`).
        """
        from csc.data.errors import DataFormatError
        from csc.eval.viewer import VIEWER_FILE, ViewerError, build_page, write_viewer
        from csc.framework import FrameworkError

        common.require_path(path)
        with common.user_errors(DataFormatError, FrameworkError, ViewerError):
            page = build_page(
                path,
                format=from_format,
                framework=framework,
                mapping=mapping,
                language=lang,
                limit=limit,
                data=data,
                allow_unlabelled=allow_unlabelled,
            )
        if out is None:
            out = path / VIEWER_FILE if path.is_dir() else path.with_suffix(".html")
        write_viewer(page, out)
        n, size = len(page.items), out.stat().st_size
        typer.echo(
            f"wrote {out} ({n} dialogue{'s' if n != 1 else ''}, {page.kind}, {size / 1e6:.1f} MB); "
            "open it in a browser"
        )
