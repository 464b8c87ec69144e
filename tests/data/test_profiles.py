"""Customer profiles: schema, sampling, descriptions, de-duplication threshold, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from csc.data.profiles import (
    ATTRIBUTES,
    CustomerProfile,
    ProfileError,
    attribute_values,
    deduplicate,
    default_profiles,
    generate_profiles,
    max_pairwise_similarity,
    read_profiles,
    sample_attributes,
    template_description,
    usable_description,
    write_profiles,
)


def unit(angle_deg: float) -> list[float]:
    a = np.radians(angle_deg)
    return [float(np.cos(a)), float(np.sin(a))]


def fake_embed(vectors: dict[str, list[float]]):
    return lambda texts: np.array([vectors[t] for t in texts])


def test_dedup_drops_pair_above_threshold_and_keeps_pair_below():
    # cos(20 deg) = 0.940 > 0.85: dropped; cos(40 deg) = 0.766 <= 0.85: kept.
    profiles = [CustomerProfile(id=n, description=n) for n in ("base", "near", "far")]
    embed = fake_embed({"base": unit(0), "near": unit(20), "far": unit(-40)})
    kept, dropped = deduplicate(profiles, threshold=0.85, embed=embed)
    assert [p.id for p in kept] == ["base", "far"]
    assert dropped[0][0].id == "near" and dropped[0][1] == "base"
    assert dropped[0][2] == pytest.approx(np.cos(np.radians(20)))


def test_dedup_threshold_is_strictly_above():
    profiles = [CustomerProfile(id=n, description=n) for n in ("a", "b")]
    embed = fake_embed({"a": unit(0), "b": unit(31.8)})  # cosine 0.8499, just below 0.85
    assert len(deduplicate(profiles, threshold=0.85, embed=embed)[0]) == 2
    assert len(deduplicate(profiles, threshold=0.80, embed=embed)[0]) == 1


def test_sampling_covers_every_value_and_is_seeded():
    combos = sample_attributes(14, seed=3)
    values = attribute_values()
    for attr in ATTRIBUTES:
        used = {c[attr] for c in combos}
        assert used == set(range(len(values[attr]))) or len(used) == 14
    assert combos == sample_attributes(14, seed=3)
    assert combos != sample_attributes(14, seed=4)


def test_template_descriptions_are_second_person_in_both_languages():
    combo = sample_attributes(1, seed=0)[0]
    from csc.data.profiles import attribute_text

    en = template_description(attribute_text(combo, "en"), "en")
    zh = template_description(attribute_text(combo, "zh"), "zh")
    assert usable_description(en, "en") and en.startswith("You")
    assert usable_description(zh, "zh") and zh.startswith("你")


def test_generate_uses_lm_descriptions_and_falls_back_to_template():
    answers = iter(["You are a careful farmer who types slowly and worries about fees.", "ok"])
    pool = generate_profiles(
        2,
        seed=0,
        describer=lambda attrs: next(answers),
        embed=lambda texts: np.eye(len(texts)),
    )
    assert [p.description_source for p in pool.profiles] == ["lm", "template"]
    assert pool.lm_descriptions == 1 and pool.template_descriptions == 1
    assert pool.profiles[1].description.startswith("You")
    assert pool.profiles[0].occupation


def test_profiles_file_roundtrip_and_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    pool = default_profiles("en")[:3]
    assert write_profiles(pool, path) == 3
    assert [p.id for p in read_profiles(path)] == [p.id for p in pool]

    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"description": "You are a pilot.", "hobby": "chess"}) + "\n")
    (mine,) = read_profiles(own)
    assert mine.id.startswith("p-") and mine.model_extra == {"hobby": "chess"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"description": "ok"}) + "\n" + json.dumps({"age_range": "30"}) + "\n"
    )
    with pytest.raises(
        ProfileError, match=r"bad.jsonl:2: a profile needs a non-empty 'description'"
    ):
        read_profiles(bad)


@pytest.mark.slow
@pytest.mark.parametrize("language", ["en", "zh"])
def test_default_pool_is_below_threshold_with_minilm(language):
    pool = default_profiles(language)
    assert len(pool) == 24
    assert max_pairwise_similarity(pool) <= 0.85


@pytest.mark.slow
def test_generated_pool_respects_threshold_with_minilm():
    pool = generate_profiles(30, seed=1)
    assert len(pool.profiles) + len(pool.dropped) == 30
    assert max_pairwise_similarity(pool.profiles) <= 0.85
