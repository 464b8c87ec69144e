"""The strategy framework as data: stages and strategies loaded from a YAML file.

The twelve CSC strategies are the default (``csc``); any other taxonomy with the same YAML shape
(for example the emotional-support one, ``esc``) works everywhere unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Language = Literal["en", "zh"]
LANGUAGES: tuple[Language, ...] = get_args(Language)


def check_language(language: str) -> Language:
    """``language`` itself if it is ``en`` or ``zh``, else a ValueError naming both."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    return language  # type: ignore[return-value]


BUILTIN_FRAMEWORKS = ("csc", "esc")


class FrameworkError(ValueError):
    """A framework file is malformed or a label does not name a strategy."""


class _Named(BaseModel):
    """A framework entry with an English and a Chinese name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    name_zh: str

    def display_name(self, lang: Language = "en") -> str:
        """The name in ``lang``."""
        return self.name_zh if lang == "zh" else self.name


class Stage(_Named):
    """One conversation stage, in the order the stages normally occur."""

    code: str
    description: str = ""
    description_zh: str = ""


class Strategy(_Named):
    """One support strategy: official number, short code, names, stage, definition and rule."""

    number: int
    code: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    stage: str | None = None  # None: usable in any stage
    definition: str
    definition_zh: str
    rule: str = ""
    rule_zh: str = ""
    fallback: bool = False  # the "Others" strategy used when nothing else applies
    aliases: tuple[str, ...] = ()

    def describe(self, lang: Language = "en", with_rule: bool = True) -> str:
        """One line for a prompt: ``EM (Emotion Management): definition. Rule: ...``."""
        if lang == "zh":
            text = f"{self.code}（{self.name_zh}）：{self.definition_zh}"
            if with_rule and self.rule_zh:
                text += f" 区分要点：{self.rule_zh}"
        else:
            text = f"{self.code} ({self.name}): {self.definition}"
            if with_rule and self.rule:
                text += f" Rule: {self.rule}"
        return text


class Policy(BaseModel):
    """Conversation policy a simulated supporter must follow (all parts optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opening: str | None = None
    verification: str | None = None
    verification_within: int = 3
    closing: str | None = None
    max_repeat: int | None = 2


class _FrameworkFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    title: str = ""
    title_zh: str = ""
    label_prefix_zh: str = "策略"
    stages: list[Stage] = Field(min_length=1)
    strategies: list[Strategy] = Field(min_length=1)
    policy: Policy = Policy(max_repeat=None)


def _norm(label: str) -> str:
    """Case-, width- and whitespace-insensitive form of a label."""
    text = unicodedata.normalize("NFKC", label).casefold()
    return re.sub(r"[\s_\-]+", " ", text).strip()


class Framework:
    """A validated strategy framework.

    Load one with :meth:`Framework.load` (``"csc"``, ``"esc"`` or a YAML path). It renders its
    definitions for prompts, exposes the ``Literal`` type of its codes for DSPy signatures, and
    normalizes every label form found in datasets to a strategy code.
    """

    def __init__(self, spec: _FrameworkFile, source: str):
        self._spec = spec
        self.source = source
        self.name = spec.name
        self.title = spec.title or spec.name
        self.title_zh = spec.title_zh or self.title
        self.stages: tuple[Stage, ...] = tuple(spec.stages)
        self.strategies: tuple[Strategy, ...] = tuple(spec.strategies)
        self.policy = spec.policy
        self.label_prefix_zh = spec.label_prefix_zh
        self._validate()
        self._by_code = {s.code: s for s in self.strategies}
        self._labels = self._build_label_index()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, name_or_path: str | Path = "csc") -> Framework:
        """Load a built-in framework by name (``csc``, ``esc``) or any framework YAML file."""
        return _load_cached(str(name_or_path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Framework:
        """Build a framework from an already-parsed mapping (same shape as the YAML)."""
        try:
            spec = _FrameworkFile.model_validate(data)
        except ValidationError as exc:
            raise FrameworkError(f"{source}: invalid framework: {_explain(exc, data)}") from None
        return cls(spec, source)

    def _validate(self) -> None:
        where = self.source
        stage_codes: set[str] = set()
        for stage in self.stages:
            if stage.code in stage_codes:
                raise FrameworkError(f"{where}: duplicate stage code {stage.code!r}")
            stage_codes.add(stage.code)
        codes: set[str] = set()
        numbers: set[int] = set()
        for i, strat in enumerate(self.strategies):
            entry = f"{where}: strategies[{i}] ({strat.code})"
            if strat.code in codes:
                raise FrameworkError(f"{entry}: duplicate strategy code {strat.code!r}")
            if strat.number in numbers:
                raise FrameworkError(f"{entry}: duplicate strategy number {strat.number}")
            if strat.stage is not None and strat.stage not in stage_codes:
                raise FrameworkError(
                    f"{entry}: unknown stage {strat.stage!r}; known stages: {sorted(stage_codes)}"
                )
            codes.add(strat.code)
            numbers.add(strat.number)
        if sum(s.fallback for s in self.strategies) > 1:
            raise FrameworkError(f"{where}: more than one strategy is marked fallback: true")
        for part in ("opening", "verification", "closing"):
            code = getattr(self.policy, part)
            if code is not None and code not in codes:
                raise FrameworkError(f"{where}: policy.{part} names unknown strategy {code!r}")

    def _build_label_index(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for s in self.strategies:
            for label in (s.code, s.name, s.name_zh, *s.aliases):
                key = _norm(label)
                other = index.get(key)
                if other is not None and other != s.code:
                    raise FrameworkError(
                        f"{self.source}: label {label!r} is ambiguous ({other} and {s.code})"
                    )
                index[key] = s.code
        return index

    # ------------------------------------------------------------------ lookups
    @property
    def codes(self) -> tuple[str, ...]:
        """Strategy codes in official order."""
        return tuple(s.code for s in self.strategies)

    @cached_property
    def strategy_literal(self) -> Any:
        """``Literal[...]`` of the strategy codes, for typed DSPy signature fields."""
        return Literal[self.codes]  # type: ignore[valid-type]

    @cached_property
    def stage_literal(self) -> Any:
        """``Literal[...]`` of the stage codes."""
        return Literal[tuple(s.code for s in self.stages)]  # type: ignore[valid-type]

    @property
    def fallback(self) -> Strategy | None:
        """The catch-all strategy (``OT`` in CSC), if the framework has one."""
        return next((s for s in self.strategies if s.fallback), None)

    def strategy(self, label: str) -> Strategy:
        """The strategy for any label form (see :meth:`normalize`)."""
        return self._by_code[self.normalize(label)]

    def stage_index(self, strategy_code: str) -> int | None:
        """Position of the strategy's stage in the stage order, None for any-stage strategies."""
        stage = self._by_code[strategy_code].stage
        return None if stage is None else [s.code for s in self.stages].index(stage)

    def normalize(self, label: str) -> str:
        """Map a strategy label in any accepted form to its code.

        Accepted: the code (``EM``, any case), the English name (any case), the Chinese name,
        aliases from the YAML, and the official data labels ``策略5 情感管理``, ``策略5: 情感管理``,
        ``策略5`` (number only), also as ``Strategy 5 Emotion Management``. In a numbered label the
        number must exist and agree with the name. Raises :class:`FrameworkError` otherwise.
        """
        if not isinstance(label, str) or not label.strip():
            raise FrameworkError(f"empty strategy label; {self._valid_hint()}")
        key = _norm(label)
        if key in self._labels:
            return self._labels[key]
        prefix = re.escape(_norm(self.label_prefix_zh or "策略"))
        m = re.match(rf"^(?:{prefix}|strategy)\s*(\d+)\s*[:：.、,，\s]*\s*(.*)$", key)
        if m:
            return self._numbered(label, int(m.group(1)), m.group(2).strip())
        raise FrameworkError(f"unknown strategy label {label!r}; {self._valid_hint()}")

    def _numbered(self, label: str, number: int, rest: str) -> str:
        """The code of a numbered label (``策略5 情感管理``, ``Strategy 5``): the number must exist
        and, when a name follows, name the same strategy; a wrong label is never guessed."""
        by_number = next((s for s in self.strategies if s.number == number), None)
        if by_number is None:
            numbers = ", ".join(str(s.number) for s in self.strategies)
            raise FrameworkError(
                f"unknown strategy label {label!r}: {self.name} has no strategy number "
                f"{number} (numbers {numbers}); {self._valid_hint()}"
            )
        if not rest:
            return by_number.code
        by_name = self._labels.get(rest)
        if by_name is None:
            raise FrameworkError(f"unknown strategy label {label!r}; {self._valid_hint()}")
        if by_name != by_number.code:
            named = self._by_code[by_name]
            raise FrameworkError(
                f"strategy label {label!r}: number {number} is {by_number.code} "
                f"({self.official_label(by_number.code)}) but the name is {named.code} "
                f"({self.official_label(named.code)}); correct the number or the name"
            )
        return by_name

    def official_label(self, code: str) -> str:
        """The label used in the released Chinese data, e.g. ``策略5 情感管理``."""
        s = self._by_code[code]
        return f"{self.label_prefix_zh}{s.number} {s.name_zh}"

    def _valid_hint(self) -> str:
        forms = ", ".join(f"{s.code}/{s.name}/{s.name_zh}" for s in self.strategies)
        return f"valid labels ({self.name}): {forms}, or '{self.label_prefix_zh}N 名称'"

    # ------------------------------------------------------------------ rendering
    def render(self, lang: Language = "en", with_rules: bool = True) -> str:
        """Stages with their strategies as prompt text, in English or Chinese."""
        lines: list[str] = []
        for i, stage in enumerate(self.stages, 1):
            desc = stage.description_zh if lang == "zh" else stage.description
            lines.append(f"{i}. {stage.display_name(lang)}: {desc}".rstrip(": "))
            for s in self.strategies:
                if s.stage == stage.code:
                    lines.append(f"   - {s.describe(lang, with_rules)}")
        anywhere = [s for s in self.strategies if s.stage is None]
        if anywhere:
            lines.append("任意阶段：" if lang == "zh" else "Any stage:")
            lines.extend(f"   - {s.describe(lang, with_rules)}" for s in anywhere)
        return "\n".join(lines)

    def render_strategy(self, code: str, lang: Language = "en") -> str:
        """One strategy's definition and rule as prompt text."""
        return self._by_code[code].describe(lang)

    def to_dict(self) -> dict[str, Any]:
        return self._spec.model_dump(mode="json")

    def __repr__(self) -> str:
        return f"Framework({self.name!r}, {len(self.stages)} stages, {len(self.strategies)} strategies)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Framework) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.name, self.codes))


def _explain(exc: ValidationError, data: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = err["loc"]
        where = ".".join(str(p) for p in loc)
        # Name the entry by its code where we can, e.g. strategies[3] (PR).
        if len(loc) >= 2 and loc[0] in ("strategies", "stages") and isinstance(loc[1], int):
            try:
                code = data[loc[0]][loc[1]].get("code", "?")
            except Exception:
                code = "?"
            where = f"{loc[0]}[{loc[1]}] ({code})" + "".join(f".{p}" for p in loc[2:])
        msg = err["msg"].replace("Field required", "missing required field")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and its position, without the quoted excerpt."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{at}"


def builtin_framework_path(name: str) -> Path:
    """Path of a framework YAML shipped with csc."""
    return Path(str(resources.files("csc.data") / "frameworks" / f"{name}.yaml"))


@lru_cache(maxsize=32)
def _load_cached(name_or_path: str) -> Framework:
    path = Path(name_or_path)
    if name_or_path in BUILTIN_FRAMEWORKS and not path.is_file():
        path = builtin_framework_path(name_or_path)
    if not path.is_file():
        raise FrameworkError(
            f"framework {name_or_path!r} not found: give one of {list(BUILTIN_FRAMEWORKS)} "
            "or the path of a framework YAML file"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FrameworkError(
            f"{path}: not UTF-8 (byte offset {exc.start}); save it as UTF-8"
        ) from None
    except RecursionError:
        raise FrameworkError(f"{path}: not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise FrameworkError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise FrameworkError(f"{path}: expected a mapping with 'stages' and 'strategies'")
    return Framework.from_dict(data, source=str(path))
