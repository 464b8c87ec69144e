"""PII redaction: every type in Chinese and English, placeholders, metadata, the labelled fixture."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from csc.data.pii import PII_TYPES, STRUCTURED_TYPES, PiiRedactor, contains_placeholder

ROOT = Path(__file__).resolve().parents[2]
R = PiiRedactor()

CASES = [
    ("zh", "phone", "我的手机号是13812345678，请回电", "13812345678", "[电话号码]"),
    ("zh", "phone", "座机010-62345678找我", "010-62345678", "[电话号码]"),
    ("en", "phone", "call me at (415) 555-2671 tonight", "(415) 555-2671", "[Phone number]"),
    ("zh", "id_number", "身份证号11010519491231002X", "11010519491231002X", "[身份证号]"),
    (
        "en",
        "bank_card",
        "my card 4111 1111 1111 1111 was charged",
        "4111 1111 1111 1111",
        "[Card number]",
    ),
    ("zh", "email", "发到zhang.wei@example.cn谢谢", "zhang.wei@example.cn", "[邮箱地址]"),
    ("en", "url", "see https://help.example.com/a?b=1.", "https://help.example.com/a?b=1", "[URL]"),
    ("zh", "url", "官网https://www.example.com/x打不开", "https://www.example.com/x", "[网址]"),
    ("en", "ip", "from IP 192.168.10.24 yesterday", "192.168.10.24", "[IP address]"),
    ("en", "ip", "IPv6 2001:db8::1 too", "2001:db8::1", "[IP address]"),
    ("zh", "order_number", "订单号2023110598765432没发货", "2023110598765432", "[订单号]"),
    ("en", "order_number", "my order number is A12345678", "A12345678", "[Order number]"),
    ("zh", "person", "我叫张伟，想咨询", "张伟", "[姓名]"),
    ("en", "person", "Hello, my name is Emily Carter.", "Emily Carter", "[Name]"),
    ("zh", "address", "寄到北京市朝阳区建国路88号吧", "北京市朝阳区建国路88号", "[地址]"),
    (
        "en",
        "address",
        "ship to 221 Baker Street, Apt 4B, Boston, MA 02116 please",
        "221 Baker Street, Apt 4B, Boston, MA 02116",
        "[Address]",
    ),
]


@pytest.mark.parametrize(("lang", "kind", "text", "value", "placeholder"), CASES)
def test_each_type_is_found_and_replaced(lang, kind, text, value, placeholder):
    found = [(m.type, m.value) for m in R.find(text, lang)]
    assert (kind, value) in found
    red = R.redact(text, lang)
    assert value not in red.text and placeholder in red.text
    assert red.counts[kind] == 1


def test_every_type_has_a_case_and_a_placeholder_in_both_languages():
    assert {c[1] for c in CASES} == set(PII_TYPES)


def test_checksums_reject_look_alikes():
    # A wrong ID check digit and a non-Luhn 16-digit number are not IDs or cards.
    assert not [m for m in R.find("号码110105194912310021", "zh") if m.type == "id_number"]
    assert not [m for m in R.find("code 4111 1111 1111 1112", "en") if m.type == "bank_card"]


def test_dates_amounts_and_versions_are_left_alone():
    text = "We shipped on 2024-03-15, refund $129.99, app version 3.14.2, 退款1299元"
    assert R.redact(text, "en").text == text


def test_placeholders_are_not_rematched_and_metadata_is_redacted():
    text = R.redact("call (415) 555-2671", "en").text
    assert R.redact(text, "en").text == text and contains_placeholder(text)
    counts: Counter[str] = Counter()
    meta = R.redact_value({"customer": {"phone": "13812345678"}, "n": 3}, "zh", counts)
    assert meta == {"customer": {"phone": "[电话号码]"}, "n": 3} and counts["phone"] == 1


def test_a_name_found_once_is_redacted_everywhere():
    names = R.names_in(["My name is Emily Carter."], "en")
    assert R.redact("Thanks Emily, and Emilyn.", "en", names).text == "Thanks [Name], and Emilyn."


def test_types_can_be_chosen():
    only = PiiRedactor(types=["email"])
    assert only.redact("a@b.com 13812345678", "zh").text == "[邮箱地址] 13812345678"
    with pytest.raises(ValueError, match="unknown PII type"):
        PiiRedactor(types=["ssn"])


def test_labelled_fixture_recall_on_structured_types():
    spec = importlib.util.spec_from_file_location("pii_bench", ROOT / "benchmarks/pii_redaction.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import json

    records = [json.loads(x) for x in bench.FIXTURE.read_text(encoding="utf-8").splitlines()]
    records += bench.read_handwritten()
    result = bench.measure(records)
    assert result["mentions"] >= 200
    assert set(result["by_language"]) == {"zh", "en"}
    for kind in STRUCTURED_TYPES:
        assert result["types"][kind]["recall"] >= 0.98, kind


def test_clean_real_dialogues_are_left_alone():
    # The shipped samples come from the released data: already anonymized, so anything found in
    # them is a false positive, except the agents' own first names in the English one.
    from csc.data.io import read_dialogues

    found = {
        lang: [
            (m.type, m.value)
            for d in read_dialogues(ROOT / "data" / "samples" / f"sample_{lang}.json")
            for t in d.turns
            for m in R.find(t.text, lang)
        ]
        for lang in ("zh", "en")
    }
    assert found["zh"] == []
    assert found["en"] == [("person", "Lee"), ("person", "Ann")]  # "this is Lee speaking"
