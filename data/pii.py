"""PII redaction for raw support dialogues, applied before any text reaches an LM or a file.

Each type is found by the most reliable offline means available (``phonenumbers`` for phones,
``stdnum`` checksums for resident IDs and cards, :mod:`ipaddress` for IPs, ``jieba`` part-of-speech
tags and cue phrases for names, patterns for the rest) and replaced by a typed placeholder in the
style of the CSConv release (``[Phone number]`` / ``[电话号码]``); docs/rewriting.md has the
table of types and how each is found. Structured types (phone, id_number, bank_card, email, url,
ip) are measured on a labelled fixture by ``benchmarks/pii_redaction.py``; names and addresses
are best effort.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PLACEHOLDERS: dict[str, dict[str, str]] = {
    "en": {
        "email": "[Email address]",
        "url": "[URL]",
        "ip": "[IP address]",
        "id_number": "[ID number]",
        "bank_card": "[Card number]",
        "phone": "[Phone number]",
        "order_number": "[Order number]",
        "address": "[Address]",
        "person": "[Name]",
    },
    "zh": {
        "email": "[邮箱地址]",
        "url": "[网址]",
        "ip": "[IP地址]",
        "id_number": "[身份证号]",
        "bank_card": "[银行卡号]",
        "phone": "[电话号码]",
        "order_number": "[订单号]",
        "address": "[地址]",
        "person": "[姓名]",
    },
}
"""The placeholder of each type, per language, in the priority order used when two findings
overlap (earlier wins)."""
PII_TYPES: tuple[str, ...] = tuple(PLACEHOLDERS["en"])
"""Every type, in priority order."""
STRUCTURED_TYPES: tuple[str, ...] = ("phone", "id_number", "bank_card", "email", "url", "ip")


_PLACEHOLDER = re.compile(
    "|".join(re.escape(p) for lang in PLACEHOLDERS.values() for p in lang.values())
)


@dataclass(frozen=True)
class Mention:
    """One PII finding: its type and character span. ``value`` is the raw text; never log it."""

    type: str
    start: int
    end: int
    value: str = field(repr=False)


@dataclass
class Redaction:
    """A redacted text and what was replaced (counts only; no raw values)."""

    text: str
    counts: Counter[str]


# ----------------------------------------------------------------------------- patterns

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'\u3000-\u303f\u3400-\u9fff\uff00-\uffef]+", re.I)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_RIC = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_CARD = re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])")
_CN_MOBILE = re.compile(r"(?<!\d)(?:\+?86[ \-]?)?1[3-9]\d[ \-]?\d{4}[ \-]?\d{4}(?!\d)")
_ORDER_CUE = re.compile(
    r"(?:订单号|订单编号|订单|单号|运单号|快递单号|流水号|账号|帐号|账户|会员号|工单号|编号|"
    r"order\s*(?:number|no\.?|id|#)|account\s*(?:number|no\.?|id|#)|tracking\s*(?:number|no\.?)|"
    r"reference\s*(?:number|no\.?)|case\s*(?:number|no\.?|id|#)|ticket\s*(?:number|no\.?|#))"
    r"\s*(?:is|是|为|:|：|#)?\s*(?P<value>[A-Za-z0-9][A-Za-z0-9\-]{3,})",
    re.I,
)
_LONG_NUMBER = re.compile(
    r"(?<![A-Za-z0-9])(?=[A-Za-z0-9\-]*\d{6})[A-Za-z0-9][A-Za-z0-9\-]{7,}(?![A-Za-z0-9])"
)

_EN_NAME_CUE = re.compile(
    r"(?:(?i:my name is|my name's|this is|i am|i'm|name:|speaking with|account holder is|"
    r"registered to|under the name(?: of)?)\s+|(?:Mr|Mrs|Ms|Miss|Dr)\.?\s+)"
    r"(?P<value>[A-Z][a-z]+(?:[ \-][A-Z][a-z]+){0,2})"
)
_EN_NOT_NAMES_WORDS = """
    I The A An Sorry Thanks Thank Hello Hi Yes No Ok Okay Calling Here Very Just Not So
    Really Still Going Trying Looking Waiting Happy Glad Sure Fine Good Great Customer
    Support Service Frustrated Angry Upset Done Back Interested Afraid Worried Confused
"""
_EN_NOT_NAMES = frozenset(_EN_NOT_NAMES_WORDS.split())
_ZH_SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏"
    "吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万"
    "钱严覃武戴莫孔向汤欧司上诸东"
)
# Words jieba tags as names that start with a surname character but are everyday words here.
_ZH_NOT_NAMES_WORDS = """
    谢谢 谢了 张卡 张图 张票 高兴 方便 程序 万一 周末 常规 金额 白天 余额
    明白 安全 任何 应该 司机 江湖 马上 毛病 邮件 付款 付费 方式 方面 钱包
    欧元 汤圆 雷达 龙头 孔雀 房东 于是 白名单 黑名单 顾问 顾客 上周 上午
    下午 高速 高级 常见 程度 石油 黄金 金卡 金融
"""
_ZH_NOT_NAMES = frozenset(_ZH_NOT_NAMES_WORDS.split())
# jieba also tags phrases such as 谢谢你们 or 上周三 as names: plural and weekday endings.
_ZH_NOT_NAME_PATTERN = re.compile(r"们$|周[一二三四五六日天末]|名单|客户|客服")
_ZH_NAME_CUE = re.compile(
    r"(?:(?:我|他|她|老婆|老公|妻子|丈夫|爱人|孩子|儿子|女儿|朋友|同事)叫|我是|姓名[是为:：]?|名字[是叫:：]?|持卡人[是为:：]?|户主[是为:：]?|联系人[是为:：]?|收件人[是为:：]?)"
    r"\s*(?P<value>[\u4e00-\u9fa5]{2,3})(?=[，,。！!？?\s]|先生|女士|小姐|$)"
)
_ZH_SURNAME_CUE = re.compile(
    r"(?:我|他|她|本人)姓(?P<value>[\u4e00-\u9fa5])(?![\u4e00-\u9fa5]{0,1}(?:的|吗))"
)
_ZH_TITLE = re.compile(r"(?P<value>[\u4e00-\u9fa5]{1,3})(?=先生|女士|小姐)")
_ZH_ADDRESS = re.compile(
    r"(?:[\u4e00-\u9fa5]{2,8}(?:省|自治区))?"
    r"(?:[\u4e00-\u9fa5]{2,8}?(?:市|州|盟))?"
    r"(?:[\u4e00-\u9fa5]{1,8}?(?:区|县|旗))?"
    r"(?:[\u4e00-\u9fa5]{1,10}?(?:镇|乡|街道))?"
    r"[\u4e00-\u9fa5A-Za-z0-9]{1,12}?(?:路|街|道|巷|弄|大道|胡同|小区|村)"
    r"(?:[0-9一二三四五六七八九十百]+段)?"
    r"(?:[0-9一二三四五六七八九十百]+(?:号院|号楼|号|弄|巷))?"
    r"(?:[0-9A-Za-z一二三四五六七八九十]+(?:栋|幢|座|号楼|单元|楼|层|室|号))*"
)
_ZH_ADDRESS_CUE = re.compile(
    r"^.*?(?:地址(?:是|为|改成|改为|在)?|寄到|送到|发到|邮到|住在|住|改成|改为|位于|搬到)[:：]?"
)
_EN_ADDRESS = re.compile(
    r"\b\d{1,6}\s+(?:[A-Z][a-z]+\.?\s+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
    r"Terrace|Parkway|Pkwy|Highway|Hwy)\b\.?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Unit|#)\.?\s*\w+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)*)?"
    r"(?:,\s*[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?"
)


def _valid_ric(candidate: str) -> bool:
    # stdnum's ric.is_valid also requires the birth place to be in its area-code table as of the
    # birth date; that table lags re-zoned districts, so only the checksum (ISO 7064 MOD 11-2),
    # the birth date and the province are checked here.
    from stdnum.cn import ric
    from stdnum.exceptions import ValidationError

    number = candidate.upper()
    if number[:2] not in _PROVINCES or ric.calc_check_digit(number) != number[-1]:
        return False
    try:
        ric.get_birth_date(number)
    except ValidationError:
        return False
    return True


_PROVINCE_CODES = """
    11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63
    64 65 71 81 82 83 91
"""
_PROVINCES = frozenset(_PROVINCE_CODES.split())


class PiiRedactor:
    """Find and replace PII in support-dialogue text (see the module docs for each type).

    Args:
        types: the types to redact (default: all of :data:`PII_TYPES`).
        placeholders: per-language placeholder overrides, e.g. ``{"en": {"person": "[Customer]"}}``.
    """

    _jieba_lock = threading.Lock()

    def __init__(
        self,
        types: Iterable[str] | None = None,
        placeholders: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        chosen = tuple(types) if types is not None else PII_TYPES
        unknown = sorted(set(chosen) - set(PII_TYPES))
        if unknown:
            raise ValueError(f"unknown PII type(s) {unknown}; types are {list(PII_TYPES)}")
        self.types = tuple(t for t in PII_TYPES if t in chosen)
        self.placeholders = {lang: dict(p) for lang, p in PLACEHOLDERS.items()}
        for lang, table in (placeholders or {}).items():
            self.placeholders.setdefault(lang, {}).update(table)

    # ------------------------------------------------------------------ finding
    def _stages(self) -> list[tuple[str, Any]]:
        stages = []
        for pii_type in self.types:
            if pii_type == "id_number" and "order_number" in self.types:
                # A number after an order/account keyword is that, even when it happens to pass
                # a card or ID checksum (one random number in ten passes Luhn).
                stages.append(("order_number", self._find_order_cue))
            stages.append((pii_type, getattr(self, f"_find_{pii_type}")))
        return stages

    def find(
        self, text: str, language: str = "en", known_names: Iterable[str] = ()
    ) -> list[Mention]:
        """All non-overlapping mentions in ``text``, in order (earlier types win overlaps).

        ``known_names``: names found elsewhere in the same dialogue (see
        :meth:`names_in`), redacted wherever they occur again ("Thanks Emily")."""
        found: list[Mention] = []
        taken = [False] * len(text)
        # Placeholders already in the text are never re-matched.
        for m in _PLACEHOLDER.finditer(text):
            for i in range(m.start(), m.end()):
                taken[i] = True
        stages = self._stages()
        names = sorted({n for n in known_names if n}, key=len, reverse=True)
        if names and "person" in self.types:
            pattern = re.compile(
                "|".join(rf"(?<![A-Za-z]){re.escape(n)}(?![A-Za-z])" for n in names)
            )
            stages.insert(0, ("person", lambda t, _lang: (m.span() for m in pattern.finditer(t))))
        for pii_type, finder in stages:
            for start, end in finder(text, language):
                start, end = _trim(text, start, end)
                if end <= start or any(taken[start:end]):
                    continue
                for i in range(start, end):
                    taken[i] = True
                found.append(Mention(pii_type, start, end, text[start:end]))
        found.sort(key=lambda m: m.start)
        return found

    def names_in(self, texts: Iterable[str], language: str = "en") -> set[str]:
        """The person names found in ``texts`` and, for Western names, each part of three or
        more letters, so a later first-name-only mention is caught too."""
        names: set[str] = set()
        if "person" not in self.types:
            return names
        for text in texts:
            for m in self.find(text, language):
                if m.type != "person":
                    continue
                names.add(m.value)
                names.update(p for p in re.split(r"[ \-]", m.value) if len(p) >= 3 and p.isascii())
        return names

    def redact(self, text: str, language: str = "en", known_names: Iterable[str] = ()) -> Redaction:
        """``text`` with every mention replaced by its type's placeholder."""
        mentions = self.find(text, language, known_names)
        table = self.placeholders.get(language, self.placeholders["en"])
        parts, pos = [], 0
        for m in mentions:
            parts.append(text[pos : m.start])
            parts.append(table[m.type])
            pos = m.end
        parts.append(text[pos:])
        return Redaction("".join(parts), Counter(m.type for m in mentions))

    def redact_value(
        self, value: Any, language: str, counts: Counter[str], known_names: Iterable[str] = ()
    ) -> Any:
        """Redact every string inside a JSON-like value (metadata), adding to ``counts``."""
        if isinstance(value, str):
            red = self.redact(value, language, known_names)
            counts.update(red.counts)
            return red.text
        if isinstance(value, Mapping):
            return {
                k: self.redact_value(v, language, counts, known_names) for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.redact_value(v, language, counts, known_names) for v in value]
        return value

    # ------------------------------------------------------------------ recognizers
    def _find_email(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        return (m.span() for m in _EMAIL.finditer(text))

    def _find_url(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        for m in _URL.finditer(text):
            end = m.end()
            while end > m.start() and text[end - 1] in ".,;:!?)]}'\"":
                end -= 1
            yield m.start(), end

    def _find_ip(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        for pattern in (_IPV4, _IPV6):
            for m in pattern.finditer(text):
                try:
                    ipaddress.ip_address(m.group())
                except ValueError:
                    continue
                yield m.span()

    def _find_id_number(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        return (m.span() for m in _RIC.finditer(text) if _valid_ric(m.group()))

    def _find_bank_card(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        from stdnum import luhn

        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group())
            mobile = len(digits) == 11 and digits[0] == "1" and digits[1] in "3456789"
            if 13 <= len(digits) <= 19 and luhn.is_valid(digits) and not mobile:
                yield m.span()

    def _find_phone(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        import phonenumbers

        regions = ("CN", "US") if language == "zh" else ("US", "CN")
        for region in regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region):
                yield match.start, match.end
        for m in _CN_MOBILE.finditer(text):
            yield m.span()

    def _find_order_cue(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        for m in _ORDER_CUE.finditer(text):
            if any(c.isdigit() for c in m.group("value")):
                yield m.span("value")

    def _find_order_number(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        yield from self._find_order_cue(text, language)
        for m in _LONG_NUMBER.finditer(text):
            yield m.span()

    def _find_address(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        for m in _EN_ADDRESS.finditer(text):
            yield m.span()
        for m in _ZH_ADDRESS.finditer(text):
            start = m.start()
            cue = _ZH_ADDRESS_CUE.match(m.group())
            if cue:  # the leftmost match can swallow the words before the address
                start += cue.end()
            value = text[start : m.end()]
            # A bare "X路" or "X街" is usually a shop or a street name in passing; an address
            # has at least two levels (a district and a road, a road and a number, ...).
            levels = len(
                re.findall(r"省|市|区|县|镇|乡|路|街|道|巷|弄|号|栋|单元|室|层|村|小区", value)
            )
            if levels >= 2 and len(value) >= 5:
                yield start, m.end()

    def _find_person(self, text: str, language: str) -> Iterable[tuple[int, int]]:
        for m in _EN_NAME_CUE.finditer(text):
            words = m.group("value").split()
            while words and words[-1] in _EN_NOT_NAMES:
                words.pop()
            if words and words[0] not in _EN_NOT_NAMES:
                start = m.start("value")
                yield start, start + len(" ".join(words))
        for m in _ZH_NAME_CUE.finditer(text):
            yield m.span("value")
        for m in _ZH_SURNAME_CUE.finditer(text):
            if m.group("value") in _ZH_SURNAMES:
                yield m.span("value")
        for m in _ZH_TITLE.finditer(text):
            value = m.group("value")
            # "王先生": a surname (and maybe a given name) right before the title.
            for i, ch in enumerate(value):
                if ch in _ZH_SURNAMES:
                    yield m.start("value") + i, m.end("value")
                    break
        if re.search(r"[\u4e00-\u9fff]", text):
            yield from _jieba_names(text, self._jieba_lock)


def _jieba_names(text: str, lock: threading.Lock) -> Iterable[tuple[int, int]]:
    import jieba
    import jieba.posseg as posseg

    with lock:  # jieba initializes its dictionary lazily and is not thread-safe while doing so
        jieba.setLogLevel(60)
        words = list(posseg.cut(text))
    pos = 0
    for w in words:
        start = text.find(w.word, pos)
        if start < 0:
            continue
        pos = start + len(w.word)
        if (
            w.flag == "nr"
            and 2 <= len(w.word) <= 4
            and w.word[0] in _ZH_SURNAMES
            and w.word not in _ZH_NOT_NAMES
            and not _ZH_NOT_NAME_PATTERN.search(w.word)
        ):
            yield start, pos


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def contains_placeholder(text: str) -> bool:
    """True when ``text`` holds one of the redaction placeholders."""
    return bool(_PLACEHOLDER.search(text))
