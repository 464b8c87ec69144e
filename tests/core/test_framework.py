"""The strategy framework loaded from YAML: validation, label normalization, rendering."""

from __future__ import annotations

from typing import get_args

import pytest
import yaml

from csc.framework import Framework, FrameworkError, builtin_framework_path


def test_csc_has_12_strategies_in_5_stages() -> None:
    fw = Framework.load("csc")
    assert len(fw.stages) == 5
    assert len(fw.strategies) == 12
    assert fw.codes == ("GT", "IV", "RP", "PR", "EM", "PS", "ID", "RI", "FR", "RC", "AC", "OT")
    assert [s.number for s in fw.strategies] == list(range(1, 13))
    assert fw.fallback is not None and fw.fallback.code == "OT"
    assert fw.policy.opening == "GT" and fw.policy.closing == "AC" and fw.policy.max_repeat == 2


def test_esc_has_8_strategies() -> None:
    fw = Framework.load("esc")
    assert len(fw.strategies) == 8
    assert fw.policy.opening is None
    assert "Reflection of Feelings" in [s.name for s in fw.strategies]


@pytest.mark.parametrize(
    "label",
    [
        "EM",
        "em",
        " Em ",
        "Emotion Management",
        "emotion management",
        "EMOTION  MANAGEMENT",
        "情感管理",
        "策略5 情感管理",
        "策略5: 情感管理",
        "策略5：情感管理",
        "策略5",
        "策略 5 情感管理",
    ],
)
def test_every_label_form_normalizes_to_the_code(label: str) -> None:
    assert Framework.load("csc").normalize(label) == "EM"


def test_full_width_and_hyphen_variants() -> None:
    fw = Framework.load("csc")
    assert fw.normalize("problem solving suggestion") == "PS"
    assert fw.normalize("Problem-Solving Suggestion") == "PS"
    assert fw.normalize("策略１２ 其它") == "OT"  # full-width digits in the official label


def test_unknown_label_lists_valid_ones() -> None:
    with pytest.raises(FrameworkError) as err:
        Framework.load("csc").normalize("Upselling")
    msg = str(err.value)
    assert "Upselling" in msg and "EM/Emotion Management/情感管理" in msg


@pytest.mark.parametrize(
    ("label", "wanted"),
    [
        ("策略99 情感管理", "no strategy number 99"),
        ("策略99", "no strategy number 99"),
        ("策略5 礼貌问候", "number 5 is EM"),
        ("Strategy 5 Greeting", "number 5 is EM"),
        ("策略3 情感管理", "number 3 is RP"),
    ],
)
def test_a_wrong_strategy_number_is_an_error_not_a_guess(label: str, wanted: str) -> None:
    # Issue #8 item 2: these were silently rewritten to EM / GT.
    with pytest.raises(FrameworkError) as err:
        Framework.load("csc").normalize(label)
    assert wanted in str(err.value) and repr(label) in str(err.value)


def test_number_and_name_that_agree_are_accepted() -> None:
    fw = Framework.load("csc")
    assert fw.normalize("Strategy 5 Emotion Management") == "EM"
    assert fw.normalize("strategy 1: greeting") == "GT"


def test_official_label_round_trip() -> None:
    fw = Framework.load("csc")
    for code in fw.codes:
        assert fw.normalize(fw.official_label(code)) == code
    assert fw.official_label("GT") == "策略1 礼貌问候"


def test_strategy_literal_for_signatures() -> None:
    assert get_args(Framework.load("esc").strategy_literal) == Framework.load("esc").codes


def test_render_in_both_languages() -> None:
    fw = Framework.load("csc")
    en, zh = fw.render("en"), fw.render("zh")
    assert "EM (Emotion Management)" in en and "Connecting" in en
    assert "EM（情感管理）" in zh and "欢迎和建立联系阶段" in zh
    assert "Any stage" in en  # OT belongs to no stage


def _write(tmp_path, data) -> str:
    path = tmp_path / "fw.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return str(path)


def _base() -> dict:
    return yaml.safe_load(builtin_framework_path("csc").read_text(encoding="utf-8"))


def test_duplicate_code_is_an_error_naming_file_and_entry(tmp_path) -> None:
    data = _base()
    data["strategies"][3]["code"] = "RP"
    path = _write(tmp_path, data)
    with pytest.raises(
        FrameworkError, match=r"fw\.yaml: strategies\[3\] \(RP\): duplicate strategy code"
    ):
        Framework.load(path)


def test_unknown_stage_is_an_error(tmp_path) -> None:
    data = _base()
    data["strategies"][0]["stage"] = "greeting"
    with pytest.raises(FrameworkError, match=r"strategies\[0\] \(GT\): unknown stage 'greeting'"):
        Framework.load(_write(tmp_path, data))


def test_missing_field_is_an_error(tmp_path) -> None:
    data = _base()
    del data["strategies"][4]["definition"]
    with pytest.raises(
        FrameworkError, match=r"strategies\[4\] \(EM\)\.definition: missing required field"
    ):
        Framework.load(_write(tmp_path, data))


def test_policy_must_name_known_strategies(tmp_path) -> None:
    data = _base()
    data["policy"]["closing"] = "BYE"
    with pytest.raises(FrameworkError, match=r"policy\.closing"):
        Framework.load(_write(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(FrameworkError, match="not found"):
        Framework.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n", encoding="utf-8")
    with pytest.raises(FrameworkError, match="not valid YAML"):
        Framework.load(bad)


def test_a_custom_framework_file_works(tmp_path) -> None:
    data = {
        "name": "mini",
        "stages": [{"code": "only", "name": "Only", "name_zh": "唯一"}],
        "strategies": [
            {
                "number": 1,
                "code": "HI",
                "name": "Hello",
                "name_zh": "你好",
                "stage": "only",
                "definition": "Say hello.",
                "definition_zh": "打招呼。",
            },
            {
                "number": 2,
                "code": "XX",
                "name": "Other",
                "name_zh": "其它",
                "fallback": True,
                "definition": "Anything else.",
                "definition_zh": "其他。",
                "aliases": ["misc"],
            },
        ],
    }
    fw = Framework.load(_write(tmp_path, data))
    assert fw.codes == ("HI", "XX")
    assert fw.normalize("MISC") == "XX"
    assert fw.stage_index("HI") == 0 and fw.stage_index("XX") is None
