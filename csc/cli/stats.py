"""``csc stats``: statistics of a dialogue file (any readable format)."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.cli import common


def register(app: typer.Typer) -> None:
    """Add ``csc stats`` to the app."""

    @app.command("stats", epilog="Example: csc stats data/samples/sample_en.json")
    def stats(
        file: Path = typer.Argument(
            ..., help="Dialogue file: .jsonl (ours), DianJin .json/.parquet, ..."
        ),
        from_format: str | None = common.DataFormatOption,
        framework: str = common.FrameworkOption,
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        seed: int = typer.Option(0, "--seed", help="Seed of the sampling in persona/self-BLEU."),
    ) -> None:
        """Print statistics of a dialogue file.

        Utterances, strategy distribution and utilization, stage-order violations, policy
        corrections, persona fidelity, diversity and the filter's pass rates. One streaming
        pass; diversity and persona figures of large files use seeded samples (shown).
        """
        from rich.console import Console

        from csc.data.io import DataFormatError, read_dialogues
        from csc.eval.stats import dialogue_stats, render_stats
        from csc.framework import Framework, FrameworkError

        common.require_path(file)
        with common.user_errors(FrameworkError, DataFormatError):
            fw = Framework.load(framework)
            # Streamed: statistics keep counters and bounded samples, never the whole file.
            dialogues = read_dialogues(file, from_format, framework=fw, allow_unlabelled=True)
            result = dialogue_stats(dialogues, fw, seed=seed)
        if as_json:
            common.echo_json(result)
        else:
            Console().print(render_stats(result, title=f"Statistics of {file}"))
