"""``csc optimize``: compile a supporter program with a DSPy optimizer and save its JSON state."""

from __future__ import annotations

from pathlib import Path

import typer

from csc.choices import Budget, MetricName, OptimizerName, ProgramKind
from csc.cli import common
from csc.framework import Language


def register(app: typer.Typer) -> None:
    @app.command(
        "optimize",
        epilog="Example: csc optimize --train data/samples/sample_en.json --out p.json",
    )
    def optimize(
        program: ProgramKind = typer.Option(
            "strategy",
            "--program",
            help="strategy (strategy predictor), supporter (both steps), labeler (history + "
            "reply -> strategy, for csc rewrite --labeler) or rolecs (RoleCS's supporter "
            "assistant and supporter, for csc synthesize --program).",
        ),
        train: Path = typer.Option(..., "--train", help="Training dialogues (any csc format)."),
        dev: Path | None = typer.Option(
            None,
            "--dev",
            help="Dev dialogues; without it (and without --splits) the train file is split by "
            "dialogue (seeded 80/10/10, the test part left out).",
        ),
        splits: Path | None = typer.Option(
            None,
            "--splits",
            help="splits.json written by `csc finetune export` for the --train file: compile on "
            "its train dialogues, score on its validation ones, never touch its test ones.",
        ),
        limit: int | None = common.LimitOption,
        optimizer: OptimizerName = typer.Option("bootstrap", "--optimizer"),
        budget: Budget = typer.Option("light", "--budget"),
        lm: str | None = common.LMOption,
        prompt_lm: str | None = typer.Option(
            None,
            "--prompt-lm",
            help="LM that proposes instructions (mipro) or reflects (gepa); default: --lm.",
        ),
        api_base: str | None = common.ApiBaseOption,
        config: Path | None = common.ConfigOption,
        metric: MetricName = typer.Option(
            "acc", "--metric", help="Strategy accuracy, or half accuracy half BERTScore."
        ),
        framework: str = common.FrameworkOption,
        lang: Language | None = common.LangOption,
        seed: int = typer.Option(0, "--seed", help="Seed of the split and of the optimizer."),
        num_threads: int = common.concurrency_option(4, "Concurrent requests."),
        max_train: int | None = typer.Option(
            None, "--max-train", min=1, help="Use at most N training examples (turns)."
        ),
        max_dev: int | None = typer.Option(
            None, "--max-dev", min=1, help="Use at most N dev examples (turns)."
        ),
        max_tokens: int | None = common.MaxTokensOption,
        labeler: Path | None = typer.Option(
            None,
            "--labeler",
            help="rolecs only: the strategy labeler that judges the supporter's adherence, a "
            "program from `csc optimize --program labeler` (default: the zero-shot labeler).",
        ),
        labeler_lm: str | None = typer.Option(
            None,
            "--labeler-lm",
            help="rolecs only: the LM of the adherence labeler (default: --lm); a different, "
            "stronger model makes the judgement independent of the model being tuned.",
        ),
        out: Path = typer.Option(..., "--out", help="Where to save the program (.json)."),
    ) -> None:
        """Optimize a supporter program; saves PROGRAM.json (JSON state) and PROGRAM.meta.json.

        Load it with `csc evaluate --supporter optimized:PROGRAM.json`. `--program rolecs`
        compiles RoleCS's supporter assistant (strategy accuracy) and supporter (strategy
        adherence, judged by a strategy labeler) into one program for `csc synthesize --program`.
        """
        from itertools import islice

        from csc.data.errors import DataFormatError
        from csc.data.io import read_dialogues
        from csc.eval.examples import dialogue_language, split_dialogues, supporter_examples
        from csc.eval.splits import DatasetSplits, SplitsError
        from csc.framework import Framework, FrameworkError
        from csc.lm import LMConfigError, build_lm, lm_name
        from csc.optimizers.optimize import optimize_program, optimize_rolecs
        from csc.optimizers.store import ProgramStoreError, load_program, save_program, sidecar_path

        if program != "rolecs" and (labeler or labeler_lm):
            common.fail(
                "--labeler and --labeler-lm judge the RoleCS supporter: use them with --program rolecs"
            )
        if program == "rolecs" and metric != "acc":
            common.fail(
                "--program rolecs has its own metrics (strategy accuracy for the supporter "
                "assistant, strategy adherence for the supporter); leave --metric at acc"
            )
        if out.suffix != ".json":
            common.fail(f"--out {out}: the program is saved as JSON state; give a .json path")
        for path in (train, dev):
            if path is not None:
                common.require_path(path)
        if dev is not None and splits is not None:
            common.fail("give either --dev or --splits (whose validation part is the dev set)")
        with common.user_errors(DataFormatError, FrameworkError, SplitsError):
            fw = Framework.load(framework)
            train_dialogues = list(islice(read_dialogues(train, framework=fw), limit))
            common.check_unique_ids(train_dialogues, train)
            if dev is not None:
                dev_dialogues = list(islice(read_dialogues(dev, framework=fw), limit))
                common.check_unique_ids(dev_dialogues, dev)
            elif splits is not None:
                parts = DatasetSplits.read(splits)
                parts.check_data(train)
                train_dialogues, dev_dialogues = (
                    parts.select(train_dialogues, part, complete=limit is None)
                    for part in ("train", "validation")
                )
            else:
                seeded = split_dialogues(train_dialogues, seed=seed)
                train_dialogues, dev_dialogues = seeded.train, seeded.dev
        language = lang or dialogue_language(train_dialogues)
        if program == "rolecs":
            from csc.programs.rolecs_agents import rolecs_examples

            trainset = rolecs_examples(train_dialogues, fw, language)[:max_train]
            devset = rolecs_examples(dev_dialogues, fw, language)[:max_dev]
        else:
            trainset = supporter_examples(train_dialogues, language=language)[:max_train]
            devset = supporter_examples(dev_dialogues, language=language)[:max_dev]

        settings = common.resolve_lm_settings(config, lm, api_base)
        errors = (LMConfigError, FileNotFoundError, OSError)
        with common.user_errors(*errors, prefix="cannot build the LM: "):
            task_lm = build_lm(settings.spec_for("supporter").merged({"max_tokens": max_tokens}))
            reflect_lm = build_lm(prompt_lm, api_base=api_base) if prompt_lm else task_lm
            judge_lm = build_lm(labeler_lm, api_base=api_base) if labeler_lm else task_lm
        judge = None
        if labeler is not None:
            with common.user_errors(ProgramStoreError):
                judge, judge_meta = load_program(labeler, framework=fw)
            if judge_meta["kind"] != "labeler":
                common.fail(
                    f"--labeler {labeler}: a {judge_meta['kind']} program; give one from "
                    "`csc optimize --program labeler`"
                )

        def show_projection(projection) -> None:  # type: ignore[no-untyped-def]
            typer.echo(
                f"{optimizer} ({budget}) on {len(trainset)} train / {len(devset)} dev examples "
                f"with {lm_name(task_lm)}: projected LM calls ~{projection.total} "
                f"({projection.task_calls} task + {projection.prompt_calls} prompt-model); "
                f"{projection.detail}"
            )

        shared = dict(
            optimizer=optimizer,
            budget=budget,
            lm=task_lm,
            prompt_lm=reflect_lm,
            framework=fw,
            language=language,
            seed=seed,
            num_threads=num_threads,
            on_projection=show_projection,
        )
        with common.user_errors(ValueError):
            if program == "rolecs":
                result = optimize_rolecs(
                    trainset, devset, labeler=judge, labeler_lm=judge_lm, **shared
                )
            else:
                result = optimize_program(program, trainset, devset, metric=metric, **shared)
        dev_part = f"validation part of {splits}" if splits else f"seeded split, seed {seed}"
        dev_source = str(dev) if dev else f"{train} ({dev_part})"
        metadata = {
            **result.metadata,
            "train": str(train),
            "dev": dev_source,
            "splits": str(splits) if splits else None,
            "limit": limit,
            **({"labeler": f"optimized:{labeler}"} if labeler else {}),
            # What the program was compiled on: `csc evaluate` refuses to score it on these.
            "train_dialogue_ids": sorted({str(ex.dialogue_id) for ex in trainset}),
            "dev_dialogue_ids": sorted({str(ex.dialogue_id) for ex in devset}),
        }
        with common.user_errors(ProgramStoreError):
            save_program(result.program, out, metadata)
        from csc.usage import format_usage

        typer.echo(f"{format_usage(result.usage)}; {result.seconds:.1f} s wall")
        for name, part in result.metadata.get("agents", {"": {"metric": metric}}).items():
            before, after = (part.get(k, getattr(result, k)) for k in ("dev_before", "dev_after"))
            typer.echo(
                f"{name + ' ' if name else ''}dev {part['metric']}: before {before:.2f} -> after "
                f"{after:.2f} ({len(devset)} examples)"
            )
        typer.echo(f"saved {out} and {sidecar_path(out)}")
        if program == "rolecs":
            typer.echo(f"synthesize with it: csc synthesize --program {out} --out ...")
        typer.echo(f"evaluate it with: csc evaluate --supporter optimized:{out} --data ...")
