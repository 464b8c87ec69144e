"""Language-model configuration: one default LM plus per-role overrides.

An LM spec is a string:

* ``local`` — the embedded SmolLM2-135M-Instruct model (offline, in-process);
* ``local:<path>`` — any Hugging Face causal-LM folder, run by the same embedded engine;
* ``finetuned:<dir>`` — a LoRA adapter trained by ``csc finetune`` (registered by
  :mod:`csc.finetune`);
* anything else — a LiteLLM model string, e.g. ``openai/gpt-4o-mini``,
  ``deepseek/deepseek-reasoner``, ``ollama_chat/qwen2.5`` or ``openai/<served name>`` together
  with ``api_base`` for a vLLM / SGLang / other OpenAI-compatible server.

Settings come from a config file (``csc.toml`` or ``csc.yaml``), then environment variables
(``CSC_LM``, ``CSC_LM_<ROLE>``, ``CSC_API_BASE``, ``CSC_API_BASE_<ROLE>``, ``CSC_TEMPERATURE``,
``CSC_MAX_TOKENS``), then explicit overrides (CLI flags), in increasing precedence.
API keys are read from the environment only (the provider's usual variable, or the variable named
by ``api_key_env``); they are never written to config, programs, logs or outputs.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from csc.framework import yaml_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AGENT_ROLES: tuple[str, ...] = (
    "planner",
    "supporter_assistant",
    "supporter",
    "customer_assistant",
    "customer",
    "judge",
)
"""The LM roles RoleCS synthesis uses."""
ROLES: tuple[str, ...] = (*AGENT_ROLES, "rewriter", "prefilter", "labeler")
"""Every role an LM can be configured for (the rewriting pipeline adds three)."""
DEFAULT_LM = "local"
CONFIG_FILES = ("csc.toml", "csc.yaml", "csc.yml")
CONFIG_SECTIONS = ("lm",)  # top-level sections of csc.toml / csc.yaml
# A key that names a credential: api_key, openai_api_key, access_token, client_secret, passwd...
# (``max_tokens`` and ``api_key_env``, which names a variable, are not credentials.)
_SECRET_NAME = re.compile(r"(?:^|[_\-])(?:api[_\-]?key|key|token|secret|password|passwd)$", re.I)
# Environment variables whose values are credentials, redacted from every message csc prints.
_SECRET_ENV = re.compile(r"(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD)(?:_|$)", re.I)
_URL_CREDENTIALS = re.compile(
    # Bounded repeats keep this linear on huge input (a 2 MB field quoted in an error).
    r"(?P<scheme>[a-z][a-z0-9+.\-]{0,30}://)(?P<user>[^/\s:@]{0,512}):(?P<pw>[^/\s@]{0,512})@",
    re.I,
)
_URL_SECRET_QUERY = re.compile(
    r"(?P<name>[?&](?:api[_\-]?key|key|token|access_token|secret|password|sig)=)[^&\s#]+", re.I
)
REDACTED = "***"


def is_secret_name(name: str) -> bool:
    """True when a config key names a credential (``api_key``, ``openai_api_key``, ``token``)."""
    return bool(_SECRET_NAME.search(name))


def redact_url(url: str | list[str]) -> str:
    """A URL (or a list of endpoint URLs, comma-joined) with any embedded password and key-like
    query values replaced by ``***`` (a ``${NAME}`` reference to a variable is kept)."""
    if isinstance(url, list):
        return ", ".join(redact_url(u) for u in url)
    url = _URL_CREDENTIALS.sub(
        # A ${NAME} reference (see expand_env_references) is not the secret: it stays.
        lambda m: (
            m[0] if _ENV_REFERENCE.fullmatch(m["pw"]) else f"{m['scheme']}{m['user']}:{REDACTED}@"
        ),
        url,
    )
    return _URL_SECRET_QUERY.sub(lambda m: f"{m['name']}{REDACTED}", url)


def redact_secrets(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` without credentials: URL passwords and the values of key-like environment
    variables (``OPENAI_API_KEY``, ``api_key_env`` targets...) become ``***``.

    Every error and summary csc prints goes through this, so a key that reaches an exception
    message (LiteLLM, pydantic) is still not shown.
    """
    env = os.environ if env is None else env
    if "://" in text or "=" in text:  # skip the URL rules on text that cannot hold a URL secret
        text = redact_url(text)
    for secret in sorted(_RUNTIME_SECRETS, key=len, reverse=True):
        # Clients print hosts without the scheme ("user:pw@host"), so the URL rule misses them.
        text = text.replace(f":{secret}@", f":{REDACTED}@")
        if len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    for name, value in env.items():
        if len(value) >= 8 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, REDACTED)
    return text


# Credentials csc itself handed to a client in this process (keys read from api_key_env, URL
# passwords), redacted from messages even when their variable is not named like a key.
_RUNTIME_SECRETS: set[str] = set()


def remember_secret(value: str | None) -> None:
    """Register a credential so :func:`redact_secrets` hides it from every later message."""
    if value:
        _RUNTIME_SECRETS.add(value)


class LMConfigError(ValueError):
    """An LM spec or configuration file is invalid."""


# ``${NAME}`` in an api_base: the value of environment variable NAME, read when the client is
# built. A password written this way stays out of configuration files, run summaries and the
# recipes `--executor ray` sends to its workers.
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env_references(url: str, env: Mapping[str, str] | None = None) -> str:
    """``url`` with every ``${NAME}`` replaced by environment variable NAME."""
    env = os.environ if env is None else env

    def value(match: re.Match[str]) -> str:
        if match[1] not in env:
            raise LMConfigError(
                f"api_base {redact_url(url)} refers to ${{{match[1]}}}, which is not set; "
                f"export {match[1]}"
            )
        return env[match[1]]

    return _ENV_REFERENCE.sub(value, url)


def literal_url_secrets(settings: LMSettings) -> list[str]:
    """The api_base URLs of ``settings`` (redacted) that hold a password or a key-like query
    value written out, rather than as a ``${NAME}`` reference."""

    def literal(url: str) -> bool:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password and not _ENV_REFERENCE.fullmatch(password):
            return True
        return bool(_URL_SECRET_QUERY.search(_ENV_REFERENCE.sub("", url)))

    urls: list[str] = []
    for spec in [settings.default, *settings.roles.values()]:
        bases = spec.api_base if isinstance(spec.api_base, list) else [spec.api_base]
        urls += [redact_url(url) for url in bases if url and literal(url)]
    return sorted(set(urls))


class LMSpec(BaseModel):
    """Where one LM comes from and how it is called."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_LM
    api_base: str | list[str] | None = None  # a list: several endpoints (csc.endpoints)
    api_key_env: str | None = None  # name of the env var holding the key (never the key)
    temperature: float | None = None
    max_tokens: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # extra LiteLLM / engine kwargs

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in value if is_secret_name(str(k)))
        if bad:
            raise ValueError(
                f"{bad} must not be stored in configuration; put the key in an environment "
                "variable and name it with api_key_env"
            )
        return value

    def describe(self) -> str:
        """``model @ api_base`` for summaries and reports, with URL passwords redacted."""
        return self.model + (f" @ {redact_url(self.api_base)}" if self.api_base else "")

    def merged(self, other: Mapping[str, Any]) -> LMSpec:
        """A copy with the non-None values of ``other`` applied on top."""
        data = self.model_dump()
        data.update({k: v for k, v in other.items() if v is not None})
        data["options"] = {**self.options, **(other.get("options") or {})}
        return LMSpec.model_validate(data)


class LMSettings(BaseModel):
    """The default LM and the per-role overrides."""

    model_config = ConfigDict(extra="forbid")

    default: LMSpec = Field(default_factory=LMSpec)
    roles: dict[str, LMSpec] = Field(default_factory=dict)

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, value: dict[str, LMSpec]) -> dict[str, LMSpec]:
        unknown = sorted(set(value) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; roles are {list(ROLES)}")
        return value

    def spec_for(self, role: str | None = None) -> LMSpec:
        """The effective spec of a role: the default with the role's own settings on top.

        A role that names a different model does not inherit the default's ``api_base``.
        """
        if role is None:
            return self.default
        if role not in ROLES:
            raise LMConfigError(f"unknown role {role!r}; roles are {list(ROLES)}")
        override = self.roles.get(role)
        if override is None:
            return self.default
        base = self.default
        fields = override.model_fields_set
        if "model" in fields and override.model != base.model:
            base = LMSpec(temperature=base.temperature, max_tokens=base.max_tokens)
        return base.merged({k: getattr(override, k) for k in fields})

    def describe(self) -> dict[str, str]:
        """Role -> model string (no secrets), for run summaries and reports."""
        return {"default": self.default.describe()} | {
            role: self.spec_for(role).describe() for role in ROLES
        }


SPEC_KEYS: tuple[str, ...] = tuple(LMSpec.model_fields)


def _did_you_mean(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _refuse_secret(path: Path, where: str) -> LMConfigError:
    return LMConfigError(
        f"{path}: {where}: API keys must not be stored in files; export the key as an "
        "environment variable (e.g. OPENAI_API_KEY) or name one with lm.api_key_env"
    )


def _check_spec_keys(spec: Mapping[str, Any], path: Path, where: str) -> dict[str, Any]:
    """The keys of one LM table: no credentials, no unknown keys (with a "did you mean")."""
    for key, value in spec.items():
        key = str(key)
        if key not in SPEC_KEYS and is_secret_name(key):
            raise _refuse_secret(path, f"{where}.{key}")
        if key == "options":
            if not isinstance(value, Mapping):
                raise LMConfigError(f"{path}: {where}.options must be a table of LiteLLM options")
            for option in value:
                if is_secret_name(str(option)):
                    raise _refuse_secret(path, f"{where}.options.{option}")
        elif key not in SPEC_KEYS:
            raise LMConfigError(
                f"{path}: {where}: unknown key {key!r}; {_did_you_mean(key, SPEC_KEYS)}"
                f"keys are {', '.join(SPEC_KEYS)}"
            )
    return dict(spec)


def _spec_from_raw(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        return {"model": raw}
    if isinstance(raw, Mapping):
        return dict(raw)
    raise LMConfigError(f"{where}: expected a model string or a table, got {type(raw).__name__}")


def _parse_config_text(path: Path) -> Any:
    """The parsed file; errors are one line with the position, never an excerpt of the file
    (which could hold a key)."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise LMConfigError(
            f"{path}: unsupported config file type {path.suffix or '(no suffix)'!r}; "
            "write csc.toml (TOML) or csc.yaml (YAML)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LMConfigError(
            f"{path}: not UTF-8 (byte offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise LMConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    parse, kind = (tomllib.loads, "TOML") if suffix == ".toml" else (yaml.safe_load, "YAML")
    try:
        return parse(text)
    except RecursionError:
        raise LMConfigError(f"{path}: not valid {kind}: nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        raise LMConfigError(f"{path}: not valid TOML: {exc}") from None
    except yaml.YAMLError as exc:
        raise LMConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse the ``[lm]`` section of a csc.toml / csc.yaml file into LMSettings fields.

    Unknown sections, keys and roles are errors with a "did you mean"; credentials are refused
    without echoing them.
    """
    path = Path(path)
    if not path.exists():
        raise LMConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise LMConfigError(f"{path}: is a folder; give the path of csc.toml or csc.yaml")
    data = _parse_config_text(path)
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise LMConfigError(
            f"{path}: the top level must be a table of sections (e.g. [lm]), "
            f"got a {type(data).__name__}"
        )
    for section in data:
        section = str(section)
        if section in CONFIG_SECTIONS:
            continue
        if is_secret_name(section):
            raise _refuse_secret(path, section)
        raise LMConfigError(
            f"{path}: unknown section [{section}]; {_did_you_mean(section, CONFIG_SECTIONS)}"
            f"sections are {', '.join(f'[{s}]' for s in CONFIG_SECTIONS)}"
        )
    lm = data.get("lm", {})
    if not isinstance(lm, Mapping):
        raise LMConfigError(f"{path}: [lm] must be a table")
    result: dict[str, Any] = {"default": {}, "roles": {}}
    for key, value in lm.items():
        key = str(key)
        if key == "roles":
            if not isinstance(value, Mapping):
                raise LMConfigError(f"{path}: [lm.roles] must be a table of role = model")
            for role, raw in value.items():
                role = str(role)
                if role not in ROLES:
                    if is_secret_name(role):
                        raise _refuse_secret(path, f"lm.roles.{role}")
                    raise LMConfigError(
                        f"{path}: unknown role lm.roles.{role}; {_did_you_mean(role, ROLES)}"
                        f"roles are {', '.join(ROLES)}"
                    )
                spec = _spec_from_raw(raw, f"{path}: lm.roles.{role}")
                result["roles"][role] = _check_spec_keys(spec, path, f"lm.roles.{role}")
        elif key == "default":
            spec = _spec_from_raw(value, f"{path}: lm.default")
            result["default"].update(_check_spec_keys(spec, path, "lm.default"))
        else:
            result["default"].update(_check_spec_keys({key: value}, path, "lm"))
    return result


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    def fields(suffix: str) -> dict[str, Any]:
        names = {"model": f"CSC_LM{suffix}", "api_base": f"CSC_API_BASE{suffix}"}
        return {key: env[name] for key, name in names.items() if env.get(name)}

    default = fields("")
    if env.get("CSC_TEMPERATURE"):
        default["temperature"] = _env_number(env, "CSC_TEMPERATURE", float)
    if env.get("CSC_MAX_TOKENS"):
        default["max_tokens"] = _env_number(env, "CSC_MAX_TOKENS", int)
    roles = {role: fields(f"_{role.upper()}") for role in ROLES}
    return {"default": default, "roles": {role: spec for role, spec in roles.items() if spec}}


def _env_number(env: Mapping[str, str], name: str, kind: type) -> Any:
    value = env[name].strip()
    try:
        return kind(value)
    except ValueError:
        what = "a whole number such as 512" if kind is int else "a number such as 0.7"
        raise LMConfigError(
            f"environment variable {name}={value[:40]!r} is not {what}; fix or unset it"
        ) from None


def find_config_file(
    cwd: str | Path | None = None, env: Mapping[str, str] | None = None
) -> Path | None:
    """``$CSC_CONFIG`` if set, else ``csc.toml`` / ``csc.yaml`` in the working directory."""
    env = os.environ if env is None else env
    if env.get("CSC_CONFIG"):
        return Path(env["CSC_CONFIG"])
    base = Path(cwd or Path.cwd())
    return next((base / name for name in CONFIG_FILES if (base / name).exists()), None)


def load_lm_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    role_overrides: Mapping[str, str | Mapping[str, Any] | None] | None = None,
) -> LMSettings:
    """Resolve LM settings: config file < environment < explicit overrides.

    ``overrides`` are default-LM fields (``model``, ``api_base``, ``temperature``...);
    ``role_overrides`` map a role to a model string or a dict of fields (CLI ``--lm-ROLE``).
    """
    env = os.environ if env is None else env
    path = Path(config_file) if config_file else find_config_file(env=env)
    layers = [read_config_file(path)] if path is not None else []
    layers.append(_env_layer(env))
    cli: dict[str, Any] = {"default": {k: v for k, v in (overrides or {}).items() if v is not None}}
    cli["roles"] = {
        role: _spec_from_raw(raw, f"--lm-{role}")
        for role, raw in (role_overrides or {}).items()
        if raw is not None
    }
    layers.append(cli)

    default: dict[str, Any] = {}
    roles: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for k, v in layer.get("default", {}).items():
            if k == "options":
                default.setdefault("options", {}).update(v)
            else:
                default[k] = v
        for role, spec in layer.get("roles", {}).items():
            roles.setdefault(role, {}).update(spec)
    try:
        return LMSettings(
            default=LMSpec(**default), roles={r: LMSpec(**s) for r, s in roles.items()}
        )
    except ValidationError as exc:
        where = f" (from {path})" if path else ""
        raise LMConfigError(f"invalid LM configuration{where}: {_explain(exc)}") from None
    except TypeError as exc:
        raise LMConfigError(f"invalid LM configuration: {exc}") from None


def _explain(exc: ValidationError) -> str:
    """A pydantic error on one line, without the input values (which may hold a key)."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or '(settings)'}: {e['msg']}" for e in errors]
    return redact_secrets("; ".join(parts))


# ---------------------------------------------------------------------------- building LMs
LMFactory = Callable[[str, LMSpec], Any]
_SCHEMES: dict[str, LMFactory] = {}


def register_lm_scheme(scheme: str, factory: LMFactory) -> None:
    """Register a ``scheme:<arg>`` LM spec (``local`` and ``finetuned`` are registered so)."""
    _SCHEMES[scheme] = factory


def _call_kwargs(spec: LMSpec) -> dict[str, Any]:
    """The spec's options plus its temperature and max_tokens where set."""
    sampling = {"temperature": spec.temperature, "max_tokens": spec.max_tokens}
    return {**spec.options, **{k: v for k, v in sampling.items() if v is not None}}


def _local_factory(arg: str, spec: LMSpec) -> Any:
    from csc.engine import LocalLM

    return LocalLM(model_path=arg or None, **_call_kwargs(spec))


def _finetuned_factory(arg: str, spec: LMSpec) -> Any:
    if not arg:
        raise LMConfigError("finetuned:<dir> needs the folder written by `csc finetune`")
    from csc.engine import LocalLM

    return LocalLM.from_finetuned(arg, **_call_kwargs(spec))


register_lm_scheme("local", _local_factory)
register_lm_scheme("finetuned", _finetuned_factory)


def split_scheme(model: str) -> tuple[str | None, str]:
    """``"local:/x"`` -> ``("local", "/x")``; ``"local"`` -> ``("local", "")``; LiteLLM -> (None, model)."""
    if model in _SCHEMES:
        return model, ""
    head, sep, rest = model.partition(":")
    return (head, rest) if sep and head in _SCHEMES else (None, model)


def build_lm(
    spec: str | LMSpec = DEFAULT_LM, *, connections: int | None = None, **fields: Any
) -> Any:
    """Build a DSPy LM from a spec string (or :class:`LMSpec`), e.g. ``build_lm("local")``.

    Extra keyword arguments (``api_base``, ``temperature``, ``max_tokens``...) override the spec.
    ``connections`` is how many calls the caller will have in flight at once (its
    concurrency): see :func:`_pooled_native_lm`.
    """
    if isinstance(spec, str):
        spec = LMSpec(model=spec)
    if fields:
        known = {k: v for k, v in fields.items() if k in LMSpec.model_fields}
        extra = {k: v for k, v in fields.items() if k not in LMSpec.model_fields}
        spec = spec.merged({**known, "options": extra})
    model = spec.model.strip()
    if not model:
        raise LMConfigError(
            "empty LM spec; use 'local' or a LiteLLM model such as openai/gpt-4o-mini"
        )
    scheme, arg = split_scheme(model)
    if scheme is not None:
        return _SCHEMES[scheme](arg, spec)
    if "/" not in model:
        raise LMConfigError(
            f"LM spec {model!r} is not 'local', 'local:<path>', 'finetuned:<dir>' or a LiteLLM "
            "model string with a provider prefix (e.g. openai/gpt-4o-mini, "
            "ollama_chat/llama3.1, or openai/<served name> with --api-base for vLLM/SGLang)"
        )
    if "litellm" not in sys.modules:
        # LiteLLM otherwise fetches its price table over the network when first imported (3
        # tries, then a warning): use the bundled one. Set the variable to False to fetch.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy

    kwargs = _call_kwargs(spec)
    if spec.api_base:
        bases = spec.api_base if isinstance(spec.api_base, list) else [spec.api_base]
        bases = [expand_env_references(url) for url in bases]
        spec = spec.model_copy(
            update={"api_base": bases if isinstance(spec.api_base, list) else bases[0]}
        )
        kwargs["api_base"] = spec.api_base
        for url in spec.api_base if isinstance(spec.api_base, list) else [spec.api_base]:
            with contextlib.suppress(ValueError):  # a malformed URL has no password to hide
                remember_secret(urlsplit(url).password)
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise LMConfigError(f"api_key_env names {spec.api_key_env}, which is not set")
        remember_secret(key)
        kwargs["api_key"] = key
    elif spec.api_base and model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
        # Local OpenAI-compatible servers (vLLM, SGLang) usually accept any key.
        kwargs["api_key"] = "EMPTY"
    kwargs.setdefault("num_retries", 5)  # LiteLLM retries rate limits/timeouts with backoff
    if isinstance(spec.api_base, list) and len(spec.api_base) > 1:
        from csc.endpoints import routed_lm

        return routed_lm(model, spec.api_base, kwargs)
    if isinstance(spec.api_base, list):
        kwargs["api_base"] = spec.api_base[0] if spec.api_base else None
    lm = dspy.LM(model, **kwargs)
    return _pooled_native_lm(lm, model, kwargs, connections) or lm


# DSPy's native engine (lm15) shares one connection pool per LM, of this many connections.
NATIVE_POOL_CONNECTIONS = 100


def _pooled_native_lm(lm: Any, model: str, kwargs: dict[str, Any], connections: int | None) -> Any:
    """``lm`` rebuilt with a connection pool of ``connections``, when DSPy would send its calls
    through its native engine, whose pool holds 100: with more calls in flight the rest wait
    for a free connection (a run at concurrency 256 reached 0.36 of the ideal rate). None when
    nothing needs to change.

    The engine is the one DSPy would choose (``dspy.clients.engines.LM15Engine``), built with
    the same provider, address, key and timeout plus ``max_connections``.
    """
    if not connections or connections <= NATIVE_POOL_CONNECTIONS:
        return None
    import dspy
    from dspy.clients.backend_selection import select_backend
    from dspy.clients.engines import LM15Engine
    from dspy.clients.engines.lm15_engine import timeouts_for
    from dspy.lm15 import RouterConfig

    try:
        selection = select_backend(lm)
    except Exception:  # a model string DSPy cannot route natively: its LiteLLM pool is wider
        return None
    if not selection.native or selection.resolution is None:
        return None
    provider = selection.resolution.provider
    clients = selection.clients
    url = clients.get("api_base") or clients.get("base_url")
    config = RouterConfig(
        api_keys={provider: clients["api_key"]} if "api_key" in clients else None,
        base_urls={provider: url} if url else None,
        timeouts=timeouts_for(clients.get("timeout")),
        max_connections=connections,
    )
    rest = {k: v for k, v in kwargs.items() if k not in clients}
    return dspy.LM(model, engine=LM15Engine(config, model_type=lm.model_type), **rest)


def lm_for_role(
    settings: LMSettings,
    role: str | None = None,
    cache: dict | None = None,
    connections: int | None = None,
) -> Any:
    """Build (or reuse from ``cache``) the LM of a role; roles with equal specs share one LM.
    ``connections``: calls in flight at once (see :func:`build_lm`)."""
    spec = settings.spec_for(role)
    cache = {} if cache is None else cache
    key = spec.model_dump_json()
    if key not in cache:
        cache[key] = build_lm(spec, connections=connections)
    return cache[key]


def lm_name(lm: Any) -> str:
    """A printable model name for reports (never includes keys)."""
    return str(getattr(lm, "model", type(lm).__name__))
