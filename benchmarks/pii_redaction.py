"""Measure PII redaction (csc.data.pii) on a labelled fixture: recall and precision per type.

The fixture, ``tests/fixtures/rewrite/pii_labelled.jsonl``, holds support-chat sentences in
Chinese and English, one per line: ``{"lang", "text", "mentions": [{"type", "start", "end"}]}``.
It was written with ``--write-fixture`` from the templates below (seeded; realistic formats:
mobile and landline numbers with and without separators and country codes, checksum-valid
resident IDs, Luhn-valid card numbers in groups, e-mails, URLs, IPv4/IPv6, order and account
numbers, names and addresses). Matching is by type and exact span; a finding of the right span
but the wrong type counts as a miss and a false positive.

    python benchmarks/pii_redaction.py            # prints the table; exit 1 if a structured
                                                  # type's recall is below 0.98
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests/fixtures/rewrite"
FIXTURE = FIXTURES / "pii_labelled.jsonl"
HANDWRITTEN = FIXTURES / "pii_handwritten.txt"
_MARK = re.compile(r"<<(\w+):(.+?)>>")


def read_handwritten(path: Path = HANDWRITTEN) -> list[dict]:
    """Hand-written lines ``LANG<TAB>text with <<type:value>> marks`` as fixture records; lines
    without marks are negatives (dates, amounts, versions) that must stay untouched."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        lang, marked = line.split("\t", 1)
        text, mentions, pos = "", [], 0
        for m in _MARK.finditer(marked):
            text += marked[pos : m.start()]
            mentions.append(
                {"type": m.group(1), "start": len(text), "end": len(text) + len(m.group(2))}
            )
            text += m.group(2)
            pos = m.end()
        text += marked[pos:]
        records.append({"lang": lang, "text": text, "mentions": mentions})
    return records


# ----------------------------------------------------------------------------- the fixture
def _ric(rng: random.Random) -> str:
    from stdnum.cn import ric

    area = rng.choice(["110105", "310104", "440305", "510107", "330106", "420111"])
    birth = f"{rng.randint(1950, 2004)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = area + birth + f"{rng.randint(0, 999):03d}"
    return body + ric.calc_check_digit(body + "?")  # it reads all but the last character


def _luhn_card(rng: random.Random, prefix: str, length: int) -> str:
    from stdnum import luhn

    digits = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    return digits + luhn.calc_check_digit(digits)


def _ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(*span)) for span in ((11, 223), (0, 255), (0, 255), (1, 254)))


def _group(number: str, sep: str, size: int = 4) -> str:
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


def _cn_mobile(rng: random.Random) -> str:
    n = f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(0, 99999999):08d}"
    styles = [n, f"{n[:3]}-{n[3:7]}-{n[7:]}", f"{n[:3]} {n[3:7]} {n[7:]}", f"+86 {n}"]
    return styles[rng.randint(0, 3)]


def _cn_landline(rng: random.Random) -> str:
    area = rng.choice(["010", "021", "0755", "028", "0571"])
    local = f"{rng.randint(2, 8)}{rng.randint(0, 9999999):07d}"  # 8-digit local numbers
    return f"{area}-{local}"


def _us_phone(rng: random.Random) -> str:
    a, b, c = (
        rng.choice([415, 212, 646, 312, 617, 206]),
        rng.randint(201, 989),
        rng.randint(0, 9999),
    )
    style = rng.randint(0, 3)
    return [
        f"({a}) {b}-{c:04d}",
        f"{a}-{b}-{c:04d}",
        f"+1 {a} {b} {c:04d}",
        f"{a}.{b}.{c:04d}",
    ][style]


ZH_NAMES = "张伟 王芳 李娜 刘洋 陈静 杨磊 赵敏 黄晓明 周杰 吴倩 徐丽 孙强".split()  # noqa: SIM905
EN_NAMES = [
    "John Smith",
    "Emily Carter",
    "Michael Brown",
    "Sarah Johnson",
    "David Lee",
    "Laura Chen",
]
ZH_ADDR = [
    "北京市朝阳区建国路88号",
    "上海市浦东新区世纪大道100号2栋1201室",
    "广东省深圳市南山区科技园路1号",
    "四川省成都市武侯区人民南路四段27号",
    "浙江省杭州市西湖区文三路478号",
]
EN_ADDR = [
    "742 Evergreen Terrace, Springfield, OR 97403",
    "1600 Amphitheatre Parkway, Mountain View, CA 94043",
    "221 Baker Street, Apt 4B, Boston, MA 02116",
    "55 Water Street, New York, NY 10041",
    "9 Oak Lane, Austin, TX 78701",
]


Sentence = tuple[str, dict[str, str]]  # a template and the value of each {type} in it


def _zh_sentences(rng: random.Random) -> list[Sentence]:
    ip = _ipv4(rng)
    card = _luhn_card(rng, rng.choice(["622202", "621700", "436742"]), rng.choice([16, 19]))
    order = f"{rng.randint(10**9, 10**10 - 1)}{rng.randint(100, 999)}"
    user = rng.choice(["zhangwei", "wangfang88", "li.na", "cs_user"])
    t = [
        ("我的手机号是{phone}，麻烦尽快回电。", {"phone": _cn_mobile(rng)}),
        (
            "您好，我叫{person}，身份证号{id_number}，想查一下账户。",
            {"person": rng.choice(ZH_NAMES), "id_number": _ric(rng)},
        ),
        (
            "扣款的那张卡是{bank_card}，请核实。",
            {"bank_card": _group(card, rng.choice(["", " ", "-"]))},
        ),
        (
            "发票请发到邮箱{email}，谢谢。",
            {"email": f"{user}@{rng.choice(['qq.com', '163.com', 'example.cn'])}"},
        ),
        (
            "你们官网{url}打不开，登录IP是{ip}。",
            {
                "url": f"https://www.{rng.choice(['example', 'shop-demo', 'bank-test'])}.com/login?id={rng.randint(1, 999)}",
                "ip": ip,
            },
        ),
        ("订单号{order_number}一直没发货。", {"order_number": order}),
        (
            "收货地址改成{address}，联系电话{phone}。",
            {"address": rng.choice(ZH_ADDR), "phone": _cn_landline(rng)},
        ),
        ("{person}女士您好，已为您登记。", {"person": rng.choice(ZH_NAMES)}),
    ]
    return [t[i] for i in rng.sample(range(len(t)), 3)]


def _en_sentences(rng: random.Random) -> list[Sentence]:
    ip6 = rng.choice(
        ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"]
    )
    card = _luhn_card(rng, rng.choice(["4", "51", "37"]), rng.choice([15, 16]))
    order = f"{rng.choice(['A', 'ORD', 'INV'])}{rng.randint(10**7, 10**8 - 1)}"
    t = [
        ("You can reach me at {phone} after 5pm.", {"phone": _us_phone(rng)}),
        (
            "Hi, my name is {person} and my card {bank_card} was charged twice.",
            {"person": rng.choice(EN_NAMES), "bank_card": _group(card, rng.choice(["", " ", "-"]))},
        ),
        (
            "Please email the receipt to {email}.",
            {
                "email": f"{rng.choice(['john.smith', 'emily_c', 'mb2024'])}@{rng.choice(['gmail.com', 'example.org', 'mail.co.uk'])}"
            },
        ),
        (
            "The page {url} shows an error from IP {ip}.",
            {
                "url": f"http://{rng.choice(['example.com', 'store.example.net'])}/orders/{rng.randint(100, 999)}",
                "ip": ip6,
            },
        ),
        ("My order number is {order_number} and it never arrived.", {"order_number": order}),
        ("Ship it to {address} please.", {"address": rng.choice(EN_ADDR)}),
        (
            "Thank you, Mr. {person}, I have updated the record.",
            {"person": rng.choice(EN_NAMES).split()[1]},
        ),
        (
            "My Chinese ID is {id_number} and my phone in Shanghai is {phone}.",
            {"id_number": _ric(rng), "phone": _cn_mobile(rng)},
        ),
        ("I logged in from {ip} yesterday.", {"ip": _ipv4(rng)}),
    ]
    return [t[i] for i in rng.sample(range(len(t)), 3)]


def write_fixture(path: Path, n_per_lang: int = 45, seed: int = 7) -> int:
    """Write the labelled fixture; returns the number of mentions."""
    rng = random.Random(seed)
    total = 0
    with path.open("w", encoding="utf-8") as fh:
        for lang, make in (("zh", _zh_sentences), ("en", _en_sentences)):
            for _ in range(n_per_lang):
                text, mentions = "", []
                for template, values in make(rng):
                    for piece in re.split(r"(\{\w+\})", template):
                        if piece.startswith("{"):
                            kind, piece = piece[1:-1], values[piece[1:-1]]
                            end = len(text) + len(piece)
                            mentions.append({"type": kind, "start": len(text), "end": end})
                        text += piece
                    text += "" if lang == "zh" else " "
                fh.write(
                    json.dumps(
                        {"lang": lang, "text": text.strip(), "mentions": mentions},
                        ensure_ascii=False,
                    )
                    + "\n"
                )
                total += len(mentions)
    return total


# ----------------------------------------------------------------------------- measuring
def measure(records: list[dict]) -> dict:
    """Recall and precision per type (exact span and type) over fixture records."""
    from csc.data.pii import PII_TYPES, STRUCTURED_TYPES, PiiRedactor

    redactor = PiiRedactor()
    gold_n, found_n, hit = Counter(), Counter(), Counter()
    by_lang = Counter()
    misses: list[str] = []
    chars = 0
    start = time.perf_counter()
    for rec in records:
        chars += len(rec["text"])
        gold = {(m["type"], m["start"], m["end"]) for m in rec["mentions"]}
        found = {(m.type, m.start, m.end) for m in redactor.find(rec["text"], rec["lang"])}
        by_lang[rec["lang"]] += len(gold)
        gold_n.update(t for t, *_ in gold)
        found_n.update(t for t, *_ in found)
        hit.update(t for t, *_ in gold & found)
        for g in sorted(gold - found):
            misses.append(f"missed {rec['lang']} {g[0]}: {rec['text'][g[1] : g[2]]!r}")
        for f in sorted(found - gold):
            misses.append(f"extra  {rec['lang']} {f[0]}: {rec['text'][f[1] : f[2]]!r}")
    seconds = time.perf_counter() - start

    def scores(types: tuple[str, ...]) -> dict:
        n_gold, n_found, n_hit = (sum(c[t] for t in types) for c in (gold_n, found_n, hit))
        recall = n_hit / n_gold if n_gold else None
        precision = n_hit / n_found if n_found else None
        return {"gold": n_gold, "found": n_found, "recall": recall, "precision": precision}

    return {
        "mentions": sum(gold_n.values()),
        "by_language": dict(by_lang),
        "types": {t: scores((t,)) for t in PII_TYPES},
        "structured": scores(STRUCTURED_TYPES),
        "overall": {
            "recall": sum(hit.values()) / max(1, sum(gold_n.values())),
            "precision": sum(hit.values()) / max(1, sum(found_n.values())),
        },
        "misses": misses,
        "seconds": round(seconds, 3),
        "chars_per_second": round(chars / seconds) if seconds else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-fixture", action="store_true", help="regenerate the fixture")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.write_fixture:
        n = write_fixture(FIXTURE)
        print(f"wrote {FIXTURE} ({n} mentions)")
    from csc.data.pii import STRUCTURED_TYPES

    generated = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    handwritten = read_handwritten()
    low: list[str] = []
    for name, records in (
        ("generated + hand-written", generated + handwritten),
        ("hand-written only", handwritten),
    ):
        result = measure(records)
        print(f"== {name}")
        _show(result, args.json)
        if name.startswith("generated"):
            low = [t for t in STRUCTURED_TYPES if (result["types"][t]["recall"] or 0) < 0.98]
    if low:
        print(f"recall below 0.98 for: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


def _show(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return
    print(
        f"{result['mentions']} labelled mentions {result['by_language']}; "
        f"{result['seconds']} s ({result['chars_per_second']} chars/s)"
    )
    print(f"{'type':<14}{'gold':>6}{'found':>7}{'recall':>9}{'precision':>11}")
    for t, row in result["types"].items():
        r = "-" if row["recall"] is None else f"{row['recall']:.3f}"
        p = "-" if row["precision"] is None else f"{row['precision']:.3f}"
        print(f"{t:<14}{row['gold']:>6}{row['found']:>7}{r:>9}{p:>11}")
    s = result["structured"]
    print(f"{'structured':<14}{s['gold']:>6}{'':>7}{s['recall']:>9.3f}{s['precision']:>11.3f}")
    o = result["overall"]
    print(f"{'all':<14}{result['mentions']:>6}{'':>7}{o['recall']:>9.3f}{o['precision']:>11.3f}")
    for miss in result["misses"]:
        print("  ", miss)


if __name__ == "__main__":
    sys.exit(main())
