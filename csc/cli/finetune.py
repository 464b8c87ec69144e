"""``csc finetune``: export SFT data, train a LoRA supporter with TRL, merge an adapter."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.choices import Device, PromptVariant, SftTask
from csc.cli.common import LangOption, echo_json, fail
from csc.framework import Language


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command group (export, run, merge, recipes)."""
    group = typer.Typer(
        help="Fine-tune supporters with TRL + LoRA: export SFT data, train, merge.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="finetune")

    @group.command(
        "export", epilog="Example: csc finetune export --data data/samples/sample_en.json --out sft"
    )
    def export(
        data: Path = typer.Option(
            ..., "--data", help="Dialogues: JSONL, DianJin .json/.parquet, or an HF dataset folder."
        ),
        out: Path = typer.Option(
            ...,
            "--out",
            help="Output folder (a saved DatasetDict plus export.json and splits.json); must be "
            "new or empty, or an earlier export with --overwrite.",
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace OUT if it holds an earlier export."
        ),
        splits: Path | None = typer.Option(
            None,
            "--splits",
            help="Reuse this splits.json (of the same data) instead of making a new split.",
        ),
        data_format: str | None = typer.Option(
            None, "--from", help="Input format: dianjin, jsonl or hf (default: from the path)."
        ),
        framework: str = typer.Option("csc", "--framework", help="csc, esc or a framework YAML."),
        task: SftTask = typer.Option(
            "joint",
            "--task",
            help="strategy (predict the next strategy), response (reply given the gold "
            "strategy) or joint (both kinds of rows).",
        ),
        prompt: PromptVariant = typer.Option(
            "compact",
            "--prompt",
            help="Supporter prompt variant to train on: compact (short student prompt without "
            "the framework's definitions; what the shipped recipes train) or full (the prompt "
            "a general LM gets). finetuned:RUN later runs with the same variant.",
        ),
        val_fraction: float = typer.Option(
            0.1, "--val-fraction", min=0.0, max=0.99, help="Share of dialogues for validation."
        ),
        test_fraction: float = typer.Option(
            0.1,
            "--test-fraction",
            min=0.0,
            max=0.99,
            help="Share of dialogues held out for testing (0.1 with 0.1 validation matches "
            "`csc evaluate --split test`).",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the dialogue split."),
        lang: Language | None = LangOption,
        limit: int | None = typer.Option(
            None, "--limit", min=1, help="Read only the first N dialogues of the data file."
        ),
        test_out: Path | None = typer.Option(
            None, "--test-out", help="Also write the test split's dialogues to this JSONL file."
        ),
    ) -> None:
        """Export dialogues as `messages` SFT data with the supporter's own inference prompts.

        Also writes OUT/splits.json, the dialogue ids of each split: pass it to `csc evaluate`,
        `csc compare` and `csc optimize` with --splits so they never score or compile on the
        train dialogues.
        """
        from rich.console import Console
        from rich.table import Table

        from csc.data.errors import DataFormatError
        from csc.finetune.export import ExportError, export_sft, write_split_dialogues
        from csc.framework import FrameworkError

        if not data.exists():
            fail(f"{data}: no such file or folder")
        if test_out is not None and (
            test_out.resolve() == data.resolve() or test_out.resolve().is_relative_to(out.resolve())
        ):
            fail(
                f"--test-out {test_out}: would overwrite the input data or the export; choose another file"
            )
        try:
            result = export_sft(
                data,
                out,
                format=data_format,
                framework=framework,
                task=task,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
                language=lang,
                limit=limit,
                splits=splits,
                overwrite=overwrite,
                prompt=prompt,
            )
            if test_out is not None:
                n = write_split_dialogues(result, "test", test_out)
                typer.echo(f"wrote {n} test dialogues to {test_out}")
        except (ExportError, DataFormatError, FrameworkError) as exc:
            fail(str(exc))
        table = Table(title=f"SFT export ({task}, {prompt} prompt) -> {out}")
        for col in ("split", "dialogues", "rows", "strategy rows", "response rows"):
            table.add_column(col, justify="right" if col != "split" else "left")
        for split, c in result.counts.items():
            table.add_row(
                split, str(c.dialogues), str(c.rows), str(c.strategy_rows), str(c.response_rows)
            )
        Console().print(table)
        if result.skipped_turns:
            typer.secho(
                f"note: skipped {result.skipped_turns} supporter turns without a strategy label",
                fg="yellow",
                err=True,
            )
        typer.echo(f"wrote {out} (metadata: {out / 'export.json'}, splits: {out / 'splits.json'})")
        typer.echo(
            "LM calls: 0 (the prompts are rendered locally); evaluate the fine-tuned supporter "
            f"on the held-out dialogues with: csc evaluate --data {data} --splits "
            f"{out / 'splits.json'} --supporter finetuned:RUN"
        )

    @group.command(
        "run", epilog="Example: csc finetune run --data sft --out runs/ft --max-steps 20"
    )
    def run(
        data: Path = typer.Option(..., "--data", help="Folder written by `csc finetune export`."),
        out: Path = typer.Option(..., "--out", help="Output folder of the run."),
        recipe: str = typer.Option(
            "smollm2-135m-lora",
            "--recipe",
            help="Recipe YAML path or shipped recipe name (see `csc finetune recipes`).",
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue from the last checkpoint in OUT/checkpoints."
        ),
        max_steps: int | None = typer.Option(
            None, "--max-steps", min=1, help="Override trainer.max_steps of the recipe."
        ),
        device: Device = typer.Option("auto", "--device", help="auto: CUDA when a GPU is visible."),
    ) -> None:
        """Train a LoRA adapter with TRL's SFTTrainer (serve it as `finetuned:OUT`).

        Writes OUT/adapter/, OUT/train_log.jsonl and OUT/csc_finetune.json.

        For several GPUs use `accelerate launch --config_file
        finetune/recipes/accelerate/multi_gpu.yaml -m csc finetune run` with the same flags.
        """
        from csc.finetune.recipes import Recipe, RecipeError
        from csc.finetune.train import FinetuneError, train

        try:
            parsed = Recipe.load(recipe)
            result = train(
                data,
                parsed,
                out,
                resume=resume,
                max_steps=max_steps,
                device=device,
            )
        except (FinetuneError, RecipeError) as exc:
            fail(str(exc))
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
        typer.echo(
            f"trained {result.steps} steps on {result.metadata.get('device', result.device)} in "
            f"{result.wall_time_s:.1f} s ({result.steps_per_second:.4f} steps/s), "
            f"final loss {loss}"
        )
        typer.echo(
            f"adapter: {result.adapter_dir} ({result.metadata.get('prompt', '?')} prompt); use it "
            f"with --supporter finetuned:{out}"
        )

    @group.command("merge", epilog="Example: csc finetune merge --run runs/ft --out runs/ft-merged")
    def merge(
        run_dir: Path = typer.Option(..., "--run", help="Output folder of `csc finetune run`."),
        out: Path = typer.Option(..., "--out", help="Folder for the merged model."),
    ) -> None:
        """Merge a run's LoRA adapter into its base model (a standalone model folder).

        The folder works as `--lm local:OUT` or with vLLM / SGLang.
        """
        from csc.finetune.train import FinetuneError, merge_adapter

        try:
            path = merge_adapter(run_dir, out)
        except FinetuneError as exc:
            fail(str(exc))
        typer.echo(f"wrote merged model to {path}; use it as --lm local:{path}")

    @group.command("recipes", epilog="Example: csc finetune recipes smollm2-135m-lora")
    def recipes(
        show: str | None = typer.Argument(None, help="Print this recipe's parsed contents."),
    ) -> None:
        """List the shipped recipes, or show one."""
        from csc.finetune.recipes import Recipe, RecipeError, builtin_recipes, recipes_dir

        if show is None:
            for name in builtin_recipes():
                typer.echo(f"{name}\t{recipes_dir() / (name + '.yaml')}")
            return
        try:
            echo_json(Recipe.load(show).to_dict())
        except RecipeError as exc:
            fail(str(exc))
