"""``csc framework show``: print a strategy framework."""

from __future__ import annotations

import typer

from csc.cli import common
from csc.framework import Framework, FrameworkError, Language


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Inspect strategy frameworks (stages and strategies).", no_args_is_help=True
    )
    app.add_typer(group, name="framework")

    @group.command("show", epilog="Example: csc framework show csc --lang zh")
    def show(
        name: str = typer.Argument("csc", help="csc, esc, or the path of a framework YAML file."),
        lang: Language = typer.Option("en", "--lang", help="Language of names and definitions."),
        rules: bool = typer.Option(
            True, "--rules/--no-rules", help="Show the distinguishing rules."
        ),
    ) -> None:
        """List the stages and strategies of a framework."""
        with common.user_errors(FrameworkError):
            fw = Framework.load(name)
        title = fw.title_zh if lang == "zh" else fw.title
        typer.secho(
            f"{title} ({fw.name}): {len(fw.strategies)} strategies in {len(fw.stages)} stages",
            bold=True,
        )
        typer.echo(f"source: {fw.source}\n")
        for i, stage in enumerate(fw.stages, 1):
            desc = stage.description_zh if lang == "zh" else stage.description
            typer.secho(f"Stage {i}. {stage.display_name(lang)}", fg="cyan", bold=True)
            if desc:
                typer.echo(f"   {desc}")
            for s in fw.strategies:
                if s.stage == stage.code:
                    _print_strategy(fw, s, lang, rules)
        anywhere = [s for s in fw.strategies if s.stage is None]
        if anywhere:
            typer.secho("Any stage", fg="cyan", bold=True)
            for s in anywhere:
                _print_strategy(fw, s, lang, rules)
        pol = fw.policy
        if pol.opening or pol.closing or pol.max_repeat:
            typer.echo(
                f"\npolicy: open with {pol.opening or '-'}, verify with {pol.verification or '-'}, "
                f"close with {pol.closing or '-'}, at most {pol.max_repeat or '∞'} in a row"
            )


def _print_strategy(fw: Framework, s, lang: str, rules: bool) -> None:
    name = s.display_name(lang)
    typer.echo(f"  {s.number:>2}. {s.code:<3} {name}  [{fw.official_label(s.code)}]")
    typer.echo(f"        {s.definition_zh if lang == 'zh' else s.definition}")
    rule = s.rule_zh if lang == "zh" else s.rule
    if rules and rule:
        typer.echo(f"        rule: {rule}")
