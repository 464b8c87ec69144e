"""Service topics for RoleCS synthesis, loaded from ``data/topics.yaml`` or a user file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from csc.framework import Language


class TopicError(ValueError):
    """A topics file is malformed."""


class Topic(BaseModel):
    """One service topic: a short code and its English and Chinese names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    name_zh: str = ""
    description: str = ""

    def display(self, language: Language = "en") -> str:
        """The topic as the agents see it, in the dialogue's language."""
        if language == "zh" and self.name_zh:
            return self.name_zh
        return f"{self.name}: {self.description}" if self.description else self.name


def load_topics(path: str | Path | None = None) -> list[Topic]:
    """Topics from a YAML file (``topics:`` list of code/name/name_zh/description) or the built-in
    seven; a ``.txt`` file holds one free-text topic per line."""
    path = Path(str(resources.files("csc.data") / "topics.yaml" if path is None else path))
    if not path.is_file():
        raise TopicError(f"topics file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return [Topic(code=f"custom{i}", name=line, name_zh=line) for i, line in enumerate(lines)]
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TopicError(f"{path}: not valid YAML: {exc}") from None
    items = data.get("topics") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise TopicError(f"{path}: expected a non-empty list under 'topics:'")
    topics = []
    for i, item in enumerate(items):
        try:
            topics.append(Topic.model_validate(item))
        except ValidationError as exc:
            raise TopicError(f"{path}: topics[{i}]: {exc.errors()[0]['msg']}") from None
    return topics


def resolve_topics(values: list[str] | None) -> list[Topic]:
    """Topics named on the command line.

    Each value may hold comma-separated items; an item is a built-in topic (code, English or
    Chinese name, any case), the path of a topics file, or else a free-text topic of its own.
    No values: all built-in topics.
    """
    builtin = load_topics()
    if not values:
        return builtin
    index = {label.casefold(): t for t in builtin for label in (t.code, t.name, t.name_zh)}
    chosen: list[Topic] = []
    for value in values:
        if Path(value).suffix in (".yaml", ".yml", ".txt") and Path(value).is_file():
            chosen.extend(load_topics(value))
            continue
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            topic = index.get(item.casefold())
            if topic is None:
                topic = Topic(code=f"custom{len(chosen)}", name=item, name_zh=item)
            if topic not in chosen:
                chosen.append(topic)
    return chosen
