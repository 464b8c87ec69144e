"""``csc finetune``: export SFT data, train a LoRA supporter with TRL, merge an adapter."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.choices import Device, PromptVariant, SftTargets, SftTask
from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    """Add the ``finetune`` command group (export, run, merge, recipes)."""
    group = typer.Typer(
        help="Fine-tune supporters with TRL + LoRA: export SFT data, train, merge.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="finetune")

    @group.command(
        "export",
        epilog="Example: csc finetune export --data data/samples/sample_en.json --out sft "
        "--teacher optimized:program.json --teacher-lm openai/gpt-4o-mini --targets teacher",
    )
    def export(
        data: Path = common.DataOption,
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
        data_format: str | None = common.DataFormatOption,
        framework: str = common.FrameworkOption,
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
        lang: Language | None = common.LangOption,
        limit: int | None = common.LimitOption,
        test_out: Path | None = typer.Option(
            None, "--test-out", help="Also write the test split's dialogues to this JSONL file."
        ),
        teacher: str | None = typer.Option(
            None,
            "--teacher",
            help="Teacher supporter whose strategy and reply become the train rows' targets: "
            "zero-shot | direct | optimized:PATH.json | finetuned:DIR. It runs on the train "
            "split only; validation and test rows keep gold targets.",
        ),
        targets: SftTargets | None = typer.Option(
            None,
            "--targets",
            help="gold (the dialogues' own), teacher (the teacher's outputs) or both (gold "
            "rows plus teacher rows). Default: teacher with --teacher, else gold.",
        ),
        teacher_lm: str | None = typer.Option(
            None,
            "--teacher-lm",
            help="LM of the teacher: local, a LiteLLM model (openai/gpt-4o-mini) or a served "
            "model with --api-base (default: the configured LM).",
        ),
        api_base: str | None = common.ApiBaseOption,
        config: Path | None = common.ConfigOption,
        max_tokens: int | None = typer.Option(
            None, "--max-tokens", min=1, help="Completion limit per teacher call."
        ),
        concurrency: int = common.concurrency_option(4, "Concurrent teacher requests."),
        drop_disagreeing: bool = typer.Option(
            False,
            "--drop-disagreeing",
            help="Leave out the teacher rows of turns where the teacher's strategy differs from "
            "the gold label (they are counted either way).",
        ),
    ) -> None:
        """Export dialogues as `messages` SFT data with the supporter's own inference prompts.

        Also writes OUT/splits.json, the dialogue ids of each split: pass it to `csc evaluate`,
        `csc compare` and `csc optimize` with --splits so they never score or compile on the
        train dialogues.

        With --teacher the train rows answer with a teacher supporter's outputs (distillation:
        a prompt-optimized strong model teaches a small student); its calls are concurrent,
        cached, and kept in OUT/teacher/ so an interrupted export resumes.
        """
        from rich.console import Console
        from rich.table import Column, Table

        from csc.data.errors import DataFormatError
        from csc.finetune.export import ExportError, export_sft, write_split_dialogues
        from csc.framework import FrameworkError

        teacher_spec = None
        if teacher is not None:
            # The LM a teacher without its own (finetuned:DIR brings one) runs on.
            settings = common.resolve_lm_settings(config, teacher_lm, api_base)
            teacher_spec = settings.spec_for("supporter").merged({"max_tokens": max_tokens})
        elif teacher_lm or api_base or drop_disagreeing:
            common.fail("--teacher-lm, --api-base and --drop-disagreeing need --teacher SPEC")
        common.require_path(data)
        if test_out is not None and (
            test_out.resolve() == data.resolve() or test_out.resolve().is_relative_to(out.resolve())
        ):
            common.fail(
                f"--test-out {test_out}: would overwrite the input data or the export; choose another file"
            )
        with common.user_errors(ExportError, DataFormatError, FrameworkError):
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
                targets=targets,
                teacher=teacher,
                teacher_lm=teacher_spec,
                concurrency=concurrency,
                drop_disagreeing=drop_disagreeing,
                progress=True,
            )
            if test_out is not None:
                n = write_split_dialogues(result, "test", test_out)
                typer.echo(f"wrote {n} test dialogues to {test_out}")
        meta = result.metadata
        cols = ("dialogues", "rows", "strategy rows", "response rows")
        title = f"SFT export ({task}, {prompt} prompt, {meta['targets']} targets) -> {out}"
        table = Table("split", *(Column(col, justify="right") for col in cols), title=title)
        for split, c in result.counts.items():
            counts = (c.dialogues, c.rows, c.strategy_rows, c.response_rows)
            table.add_row(split, *map(str, counts))
        Console().print(table)
        if result.skipped_turns:
            common.warn(
                f"note: skipped {result.skipped_turns} supporter turns without a strategy label"
            )
        taught = meta.get("teacher")
        if taught:
            _echo_teacher_summary(taught, result)
        typer.echo(f"wrote {out} (metadata: {out / 'export.json'}, splits: {out / 'splits.json'})")
        calls = (
            "LM calls: 0 (the prompts are rendered locally)"
            if not taught
            else f"teacher LM calls this run: {(taught.get('lm_usage') or {}).get('calls', 0)}"
        )
        typer.echo(
            f"{calls}; evaluate the fine-tuned supporter on the held-out dialogues with: "
            f"csc evaluate --data {data} --splits {out / 'splits.json'} --supporter finetuned:RUN"
        )

    def _echo_teacher_summary(taught: dict, result) -> None:  # type: ignore[no-untyped-def]
        """One line per fact: what the teacher answered, agreement, dropped rows, cost."""
        from csc.lm import redact_secrets

        agreement = taught.get("agreement")
        typer.echo(
            redact_secrets(
                f"teacher {taught['spec']} on {taught['lm']['description']}: "
                f"{taught['answered_turns']}/{taught['turns']} train turns answered "
                f"({taught['turns_from_earlier_runs']} resumed from {taught['outputs']}, "
                f"{taught['failed_turns']} failed); strategy agrees with the gold label on "
                f"{taught['agreeing_turns']}/{taught['labelled_turns']}"
                + (f" ({agreement:.1f}%)" if agreement is not None else "")
            )
        )
        action = "dropped (--drop-disagreeing)" if result.metadata["drop_disagreeing"] else "kept"
        typer.echo(
            f"disagreeing turns: {result.disagreeing_turns}, their teacher rows {action}; "
            f"teacher tokens: {taught['prompt_tokens']} prompt + {taught['completion_tokens']} "
            f"completion; teacher wall time {taught['wall_time_s']:.1f} s"
        )
        if taught["failed_turns"]:
            common.warn(
                f"note: the teacher failed on {taught['failed_turns']} turn(s); they have no "
                "teacher rows. Re-run the same command (with --overwrite) to retry only those"
            )
        if taught.get("seen_held_out_dialogues"):
            common.warn(
                f"note: the teacher was compiled or trained on {taught['seen_held_out_dialogues']} "
                "of this export's validation/test dialogues; its outputs may carry them into "
                "the student (re-split, or optimize the teacher on this export's splits.json)"
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

        with common.user_errors(FinetuneError, RecipeError):
            result = train(
                data, Recipe.load(recipe), out, resume=resume, max_steps=max_steps, device=device
            )
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

        with common.user_errors(FinetuneError):
            path = merge_adapter(run_dir, out)
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
        with common.user_errors(RecipeError):
            common.echo_json(Recipe.load(show).to_dict())
