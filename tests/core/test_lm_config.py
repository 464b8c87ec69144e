"""LM spec parsing and configuration precedence: file < environment < CLI flags."""

from __future__ import annotations

import json

import dspy
import pytest

from csc.lm import (
    ROLES,
    LMConfigError,
    LMSettings,
    LMSpec,
    build_lm,
    load_lm_settings,
    split_scheme,
)


def test_split_scheme() -> None:
    assert split_scheme("local") == ("local", "")
    assert split_scheme("local:/models/x") == ("local", "/models/x")
    assert split_scheme("finetuned:runs/a") == ("finetuned", "runs/a")
    assert split_scheme("openai/gpt-4o-mini") == (None, "openai/gpt-4o-mini")
    assert split_scheme("ollama_chat/llama3.1:8b") == (None, "ollama_chat/llama3.1:8b")


def test_defaults_to_local_without_any_configuration(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no csc.toml here
    settings = load_lm_settings(env={})
    assert settings.default.model == "local"
    assert all(settings.spec_for(role).model == "local" for role in ROLES)


def test_precedence_file_env_cli(tmp_path) -> None:
    cfg = tmp_path / "csc.toml"
    cfg.write_text(
        '[lm]\nmodel = "openai/from-file"\ntemperature = 0.3\n'
        '[lm.roles]\njudge = "openai/judge-file"\ncustomer = { model = "openai/cust", api_base = "http://h:1/v1" }\n',
        encoding="utf-8",
    )
    s = load_lm_settings(cfg, env={})
    assert s.default.model == "openai/from-file" and s.default.temperature == 0.3
    assert s.spec_for("judge").model == "openai/judge-file"
    assert s.spec_for("customer").api_base == "http://h:1/v1"
    assert s.spec_for("planner").model == "openai/from-file"

    env = {"CSC_LM": "openai/from-env", "CSC_LM_JUDGE": "openai/judge-env"}
    s = load_lm_settings(cfg, env=env)
    assert s.default.model == "openai/from-env"
    assert s.spec_for("judge").model == "openai/judge-env"
    assert s.default.temperature == 0.3  # untouched fields still come from the file

    s = load_lm_settings(
        cfg, env=env, overrides={"model": "openai/from-cli"}, role_overrides={"judge": "local"}
    )
    assert s.default.model == "openai/from-cli"
    assert s.spec_for("judge").model == "local"
    assert s.spec_for("supporter").model == "openai/from-cli"


def test_yaml_config_and_env_discovery(tmp_path) -> None:
    cfg = tmp_path / "csc.yaml"
    cfg.write_text("lm:\n  default: openai/y\n  roles:\n    supporter: local\n", encoding="utf-8")
    s = load_lm_settings(env={"CSC_CONFIG": str(cfg)})
    assert s.default.model == "openai/y" and s.spec_for("supporter").model == "local"


def test_role_with_other_model_does_not_inherit_api_base() -> None:
    s = LMSettings(
        default=LMSpec(model="openai/served", api_base="http://localhost:8000/v1"),
        roles={"judge": LMSpec(model="openai/gpt-4o"), "customer": LMSpec(temperature=1.0)},
    )
    assert s.spec_for("judge").api_base is None
    assert s.spec_for("customer").api_base == "http://localhost:8000/v1"
    assert s.spec_for("customer").temperature == 1.0


def test_unknown_role_is_an_error(tmp_path) -> None:
    with pytest.raises(LMConfigError, match="unknown role"):
        load_lm_settings(None, env={"CSC_CONFIG": ""}, role_overrides={"narrator": "local"})
    with pytest.raises(LMConfigError, match="unknown role"):
        LMSettings().spec_for("narrator")


def test_keys_are_refused_in_config_files(tmp_path) -> None:
    cfg = tmp_path / "csc.toml"
    cfg.write_text('[lm]\nmodel = "openai/x"\napi_key = "sk-secret"\n', encoding="utf-8")
    with pytest.raises(LMConfigError, match="must not be stored"):
        load_lm_settings(cfg, env={})
    with pytest.raises(Exception, match="must not be stored"):
        LMSpec(model="openai/x", options={"api_key": "sk-secret"})


def test_bad_spec_is_a_clear_error() -> None:
    with pytest.raises(LMConfigError, match="provider prefix"):
        build_lm("gpt4")
    with pytest.raises(LMConfigError, match="finetuned"):
        build_lm("finetuned:")


def test_litellm_spec_builds_dspy_lm_and_keeps_keys_out_of_state(monkeypatch) -> None:
    monkeypatch.setenv("MY_SERVER_KEY", "sk-very-secret")
    lm = build_lm(
        LMSpec(
            model="openai/qwen", api_base="http://127.0.0.1:8000/v1", api_key_env="MY_SERVER_KEY"
        ),
        temperature=0.0,
    )
    assert isinstance(lm, dspy.LM)
    assert lm.model == "openai/qwen"
    assert lm.kwargs["api_base"] == "http://127.0.0.1:8000/v1"
    assert "sk-very-secret" not in json.dumps(lm.dump_state(), default=str)


def test_openai_compatible_server_gets_a_placeholder_key(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = build_lm("openai/served", api_base="http://127.0.0.1:8000/v1")
    assert lm.kwargs["api_key"] == "EMPTY"


def test_describe_has_every_role_and_no_secrets(monkeypatch) -> None:
    s = load_lm_settings(None, env={"CSC_CONFIG": "", "CSC_LM": "openai/gpt-4o-mini"})
    described = s.describe()
    assert described["supporter"] == "openai/gpt-4o-mini"
    assert set(described) >= {"planner", "supporter_assistant", "judge", "rewriter"}
