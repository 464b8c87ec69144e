"""Several endpoints for one LM: configuration (csc.toml, repeated --api-base) and the router."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from csc.lm import build_lm, lm_for_role, load_lm_settings

ROOT = Path(__file__).resolve().parents[2]


def test_toml_list_of_endpoints_builds_a_routed_lm(tmp_path):
    cfg = tmp_path / "csc.toml"
    cfg.write_text(
        '[lm]\nmodel = "openai/served"\n'
        'api_base = ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]\n'
        '[lm.roles]\njudge = {model = "openai/served", api_base = "http://10.0.0.3:8000/v1"}\n'
    )
    settings = load_lm_settings(cfg, env={})
    lm = lm_for_role(settings, "planner")
    assert lm.endpoints == ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]
    deployments = lm.engine.router.model_list
    assert [d["litellm_params"]["api_base"] for d in deployments] == lm.endpoints
    assert {d["litellm_params"]["model"] for d in deployments} == {"openai/served"}
    # A role with one endpoint gets an ordinary LM.
    judge = lm_for_role(settings, "judge")
    assert not hasattr(judge, "endpoints") and judge.kwargs.get("api_base", "").endswith(
        "3:8000/v1"
    )


def test_one_item_list_is_one_endpoint_and_duplicates_are_refused():
    lm = build_lm("openai/served", api_base=["http://a:1/v1"])
    assert not hasattr(lm, "endpoints")
    with pytest.raises(ValueError, match="twice"):
        build_lm("openai/served", api_base=["http://a:1/v1", "http://a:1/v1"])


def test_repeated_api_base_reaches_the_settings(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import csc.lm
    from csc.cli import app

    seen = {}

    def fake_build(spec, **kw):
        seen["api_base"] = spec.api_base
        raise csc.lm.LMConfigError("stop here")

    monkeypatch.setattr(csc.lm, "build_lm", fake_build)
    res = CliRunner().invoke(
        app,
        [
            "synthesize",
            "--out",
            str(tmp_path / "r"),
            "--lm",
            "openai/x",
            "--api-base",
            "http://a:1/v1",
            "--api-base",
            "http://b:2/v1",
        ],
    )
    assert res.exit_code == 1 and "stop here" in res.output
    assert seen["api_base"] == ["http://a:1/v1", "http://b:2/v1"]


def _server(error_rate: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fake_openai_server.py"),
            "--latency",
            "0.01",
            "--error-rate",
            str(error_rate),
            "--idle-exit",
            "60",
            "--stop-on-stdin-eof",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, int(proc.stdout.readline().split()[1])


@pytest.mark.slow
def test_router_retries_a_failing_endpoint_on_the_other(monkeypatch):
    import json
    import urllib.request

    import dspy

    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    good, good_port = _server(0.0)
    bad, bad_port = _server(1.0)  # every answer is a 500 or 429
    try:
        lm = build_lm(
            "openai/fake",
            api_base=[f"http://127.0.0.1:{good_port}/v1", f"http://127.0.0.1:{bad_port}/v1"],
            cache=False,
        )
        predict = dspy.Predict("question -> answer")
        with dspy.context(lm=lm), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            answers = [predict(question=f"q{i} {time.time()}").answer for i in range(6)]
        assert all(answers)
        # Not DSPy's deprecated complete_legacy() shortcut (removed in DSPy 3.5).
        assert not [w for w in caught if "complete_legacy" in str(w.message)]
        # Every call went through the router's canonical engine path and reports its tokens.
        assert all(entry["usage"].get("prompt_tokens", 0) > 0 for entry in lm.history[-6:])

        def stats(port):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/stats") as r:
                return json.loads(r.read())

        assert sum(stats(good_port)["calls"].values()) == 6
        assert sum(stats(bad_port)["errors"].values()) >= 1  # tried, failed, retried elsewhere
    finally:
        for proc in (good, bad):
            proc.stdin.close()
            proc.wait(timeout=10)
