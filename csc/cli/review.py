"""``csc review apply``: turn a reviewer's marks into a dataset and measure judge agreement."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.cli import common


def register(app: typer.Typer) -> None:
    """Add the ``review`` command group."""
    group = typer.Typer(
        help="Expert review of dialogues marked in the viewer (`csc view`, review mode).",
        no_args_is_help=True,
    )
    app.add_typer(group, name="review")

    @group.command(
        "apply", epilog="Example: csc review apply review.json runs/quickstart --out accepted.jsonl"
    )
    def apply(
        review_file: Path = typer.Argument(..., help="review.json exported by the viewer."),
        run: Path = typer.Argument(
            ..., help="The run folder or dialogue file the review was made on."
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            help="Dataset of the accepted dialogues (.jsonl, .json/.parquet DianJin, or a folder "
            "for hf; default: RUN/reviewed.jsonl, or FILE.reviewed.jsonl).",
        ),
        to_format: str | None = typer.Option(
            None, "--to", help="Output format: jsonl, dianjin or hf (default: from --out)."
        ),
        framework: str = typer.Option(
            "csc", "--framework", help="csc, esc or a framework YAML of the dialogues."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
        as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
    ) -> None:
        """Write the dialogues the reviewer accepted (every criterion accepted) as a new dataset, and report reviewer-vs-LLM-judge agreement per criterion (Cohen's kappa)."""
        from csc.data.errors import DataFormatError
        from csc.eval.review import ReviewError, apply_review, load_review, review_dialogues
        from csc.eval.viewer import ViewerError
        from csc.framework import FrameworkError

        common.require_path(run)
        if out is None:
            out = (
                run / "reviewed.jsonl"
                if run.is_dir()
                else run.with_name(f"{run.stem}.reviewed.jsonl")
            )
        if out.exists() and not overwrite:
            common.fail(f"{out}: already exists; pass --overwrite to replace it, or choose --out")
        with common.user_errors(ReviewError, DataFormatError, FrameworkError, ViewerError):
            review = load_review(review_file)
            dialogues = review_dialogues(run, framework=framework)
            outcome = apply_review(review, dialogues, out, format=to_format, framework=framework)
        result = {
            "review": str(review_file),
            "run": str(run),
            "reviewer": review.reviewer,
            "out": str(outcome.out),
            **{k: getattr(outcome, k) for k in ("accepted", "rejected", "undecided", "unreviewed")},
            "agreement": [row.to_dict() for row in outcome.agreement],
        }
        if as_json:
            common.echo_json(result)
            return
        typer.echo(
            f"{outcome.accepted} accepted, {outcome.rejected} rejected, {outcome.undecided} "
            f"partly reviewed, {outcome.unreviewed} not reviewed; wrote the accepted to "
            f"{outcome.out}"
        )
        typer.echo("\nreviewer vs LLM judge (accept = pass)")
        typer.echo(
            f"  {'criterion':<26}{'n':>5}{'agree':>8}{'kappa':>8}{'reviewer':>10}{'judge':>8}"
        )
        for row in outcome.agreement:
            typer.echo(
                f"  {row.criterion:<26}{row.n:>5}{_na(row.agreement, '.0%'):>8}"
                f"{_na(row.kappa, '.2f'):>8}{_na(row.reviewer_accept_rate, '.0%'):>10}"
                f"{_na(row.judge_pass_rate, '.0%'):>8}"
            )
        if any(row.n and row.kappa is None for row in outcome.agreement):
            typer.echo("  (kappa n/a: both gave every dialogue the same label)")


def _na(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
