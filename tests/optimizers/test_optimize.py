"""Prompt optimization end to end with scripted LMs: compile, save, load, evaluate."""

from __future__ import annotations

import json
import threading

import dspy
import pytest
from scripted_lm import ScriptedLM
from typer.testing import CliRunner

from csc.cli import app
from csc.dialogue import Dialogue, Speaker, Turn
from csc.eval.examples import split_dialogues, supporter_examples
from csc.eval.metrics import corpus_bleu, strategy_accuracy
from csc.optimizers import load_program, optimize_program, project_lm_calls, save_program
from csc.optimizers.store import ProgramStoreError, sidecar_path
from csc.programs.supporter import StrategyPredictor, Supporter


class RuleLM(ScriptedLM):
    """A 'model' that knows part of the policy: GT on an empty history, else PS."""

    def __init__(self):
        self.n_calls = 0
        self.lock = threading.Lock()
        super().__init__(self.answer, model="rule-lm")

    def answer(self, messages):
        with self.lock:
            self.n_calls += 1
        prompt = messages[-1]["content"]
        if "[[ ## strategy_definition ## ]]" in prompt:
            return {"response": "we will fix the card today"}
        hist = prompt.split("[[ ## history ## ]]")[1]
        started = "has not started" not in hist.split("[[ ##")[0]
        return {"strategy": "PS" if started else "GT"}


def _dialogues(n: int = 10) -> list[Dialogue]:
    s, c = Speaker.SUPPORTER, Speaker.CUSTOMER
    return [
        Dialogue(
            id=f"d{i}",
            turns=[
                Turn(speaker=s, text="Hello, how can I help you today?", strategy="GT"),
                Turn(speaker=c, text=f"My card number {i} was blocked."),
                Turn(speaker=s, text="Please try unlocking it in the app.", strategy="PS"),
                Turn(speaker=c, text="That is really annoying!"),
                Turn(speaker=s, text="I understand, sorry for the trouble.", strategy="EM"),
            ],
        )
        for i in range(n)
    ]


def test_bootstrap_compiles_saves_and_loads(tmp_path):
    parts = split_dialogues(_dialogues(), seed=0)
    train, dev = supporter_examples(parts.train), supporter_examples(parts.dev)
    lm = RuleLM()
    projected = []
    result = optimize_program(
        "strategy", train, dev, optimizer="bootstrap", lm=lm, on_projection=projected.append
    )
    assert projected and projected[0].total >= result.lm_calls == lm.n_calls > 0
    assert result.dev_before == pytest.approx(200 / 3, abs=0.01)  # GT, PS right; EM wrong
    demos = result.program.strategist.demos
    assert demos and all(d["strategy"] in ("GT", "PS") for d in demos)

    path = save_program(result.program, tmp_path / "p.json", result.metadata)
    state = json.loads(path.read_text())
    assert "strategist" in state and "api_key" not in path.read_text()
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["kind"] == "strategy" and meta["optimizer"] == "bootstrap"
    assert meta["lm"] == "rule-lm" and meta["lm_calls"] == result.lm_calls

    loaded, _ = load_program(path)
    assert isinstance(loaded, StrategyPredictor)
    assert [d["strategy"] for d in loaded.strategist.demos] == [d["strategy"] for d in demos]


def test_save_refuses_credentials(tmp_path):
    program = StrategyPredictor()
    program.strategist.lm = dspy.LM("openai/x", api_key="sk-secret-value")
    meta = {"kind": "strategy", "framework": "csc", "language": "en"}
    save_program(program, tmp_path / "p.json", meta)
    assert "sk-secret-value" not in (tmp_path / "p.json").read_text()
    # Anything that still carries a credential is refused, and nothing is left behind.
    with pytest.raises(ProgramStoreError, match="credentials"):
        save_program(program, tmp_path / "r.json", {**meta, "options": {"api_key": "sk-1"}})
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ProgramStoreError, match="sidecar missing"):
        (tmp_path / "q.json").write_text("{}")
        load_program(tmp_path / "q.json")


def test_projection_counts_predictors_and_budgets():
    small = project_lm_calls("strategy", "bootstrap", "light", 20, 5)
    both = project_lm_calls("supporter", "bootstrap", "light", 20, 5)
    assert small.total == 20 + 2 * 5 and both.total == 2 * small.total
    assert (
        project_lm_calls("strategy", "mipro", "medium", 200, 100).total
        > project_lm_calls("strategy", "mipro", "light", 200, 100).total
    )
    assert project_lm_calls("strategy", "gepa", "light", 20, 5).prompt_calls > 0


@pytest.mark.slow  # a full GEPA loop, several seconds
def test_gepa_runs_with_feedback_metric():
    parts = split_dialogues(_dialogues(6), seed=0)
    train, dev = supporter_examples(parts.train), supporter_examples(parts.dev)
    lm = RuleLM()

    prompts = []

    def reflect(messages):
        prompts.append(messages[-1]["content"])
        return "```\nPick EM when the customer is upset; otherwise follow the stage order.\n```"

    reflector = ScriptedLM(reflect)
    dspy_gepa = dspy.GEPA
    result = optimize_program(
        "strategy", train, dev, optimizer="gepa", lm=lm, prompt_lm=reflector, seed=0
    )
    assert dspy_gepa is dspy.GEPA
    assert result.lm_calls > 0
    # The reflection LM saw our feedback: gold vs predicted strategy with definitions.
    assert any("Wrong strategy: predicted PS, but the expert chose EM" in p for p in prompts)


def _write_jsonl(path, dialogues):
    path.write_text("".join(d.model_dump_json() + "\n" for d in dialogues))


def test_cli_optimize_then_evaluate_optimized(tmp_path, monkeypatch):
    import csc.lm

    monkeypatch.setattr(csc.lm, "build_lm", lambda *a, **k: RuleLM())
    data = tmp_path / "train.jsonl"
    _write_jsonl(data, _dialogues())
    runner = CliRunner()
    program = tmp_path / "p.json"
    res = runner.invoke(
        app,
        [
            "optimize",
            "--program",
            "strategy",
            "--train",
            str(data),
            "--optimizer",
            "bootstrap",
            "--lm",
            "whatever/model",
            "--out",
            str(program),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "projected LM calls" in res.output and "LM calls: " in res.output
    assert "dev acc: before" in res.output
    assert program.exists() and sidecar_path(program).exists()

    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--data",
        str(data),
        "--supporter",
        f"optimized:{program}",
        "--lm",
        "whatever/model",
        "--context",
        "both",
        "--no-bertscore",
        "--concurrency",
        "2",
        "--out",
        str(out),
    ]
    # The first 7 dialogues hold the ones it was compiled on: refused before any LM is built.
    res = runner.invoke(app, [*args, "--limit", "7"])
    assert res.exit_code == 1 and "trained or compiled on" in res.output
    assert "--allow-seen" in res.output and not out.exists()
    # The seeded held-out dialogues (what `csc optimize` left out) are fine.
    res = runner.invoke(app, [*args, "--split", "test"])
    assert res.exit_code == 0, res.output
    for name in [
        "metrics.json",
        "predictions.jsonl",
        "report.md",
        "confusion_reference.png",
        "strategy_f1_generated.png",
        "strategy_distribution_reference.png",
    ]:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["data_sha256"]) == 64 and metrics["supporter"] == f"optimized:{program}"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for ctx in ("reference", "generated"):
        mine = [r for r in rows if r["context"] == ctx]
        m = metrics["contexts"][ctx]
        assert len(mine) == m["n_examples"] == 3  # one held-out dialogue, three supporter turns
        # Recomputing from predictions.jsonl gives the reported numbers.
        acc = strategy_accuracy(
            [r["gold_strategy"] for r in mine], [r["predicted_strategy"] for r in mine]
        )
        assert acc == pytest.approx(m["acc"])
        bleu = corpus_bleu(
            [r["generated_response"] for r in mine], [r["gold_response"] for r in mine], 4
        )
        assert bleu == pytest.approx(m["bleu4"], abs=0.01)


def test_cli_errors_name_the_problem(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "none.json")])
    assert res.exit_code == 1 and "no such file" in res.output
    data = tmp_path / "d.jsonl"
    _write_jsonl(data, _dialogues(2))
    res = runner.invoke(app, ["evaluate", "--data", str(data), "--supporter", "magic"])
    assert res.exit_code == 1 and "unknown supporter 'magic'" in res.output
    res = runner.invoke(
        app, ["evaluate", "--data", str(data), "--supporter", f"optimized:{tmp_path}/x.json"]
    )
    assert res.exit_code == 1 and "csc optimize" in res.output
    res = runner.invoke(
        app,
        ["optimize", "--train", str(data), "--optimizer", "sgd", "--out", str(tmp_path / "p.json")],
    )
    assert res.exit_code == 2 and "Invalid value for '--optimizer'" in res.output


def test_supporter_program_optimization_keeps_both_predictors(tmp_path):
    parts = split_dialogues(_dialogues(), seed=1)
    result = optimize_program(
        Supporter(),
        supporter_examples(parts.train),
        supporter_examples(parts.dev),
        optimizer="bootstrap",
        lm=RuleLM(),
    )
    path = save_program(result.program, tmp_path / "s.json", result.metadata)
    loaded, meta = load_program(path)
    assert meta["kind"] == "supporter" and isinstance(loaded, Supporter)
    assert loaded.responder.demos and loaded.strategist.demos
