"""Signatures of the CSConv rewriting pipeline: the LLM pre-filter, the rewriter and the
post-filter judge (the strategy labeler is :func:`csc.signatures.supporter.strategy_labeling_signature`).

As with RoleCS, the classes below are templates: the rewriter's output is typed with the
framework's own strategy codes, so use :func:`rewrite_signatures` for a given framework and
language (``en`` or ``zh``; Chinese instructions and field descriptions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import dspy
from pydantic import BaseModel, ConfigDict, Field, create_model

from csc.data.turns import as_framework
from csc.framework import Framework, Language, check_language
from csc.signatures.types import DialogueHistory, localized, zh_judge_descs

__all__ = [
    "POSTFILTER_CRITERIA",
    "PREFILTER_CRITERIA",
    "ConductScreen",
    "DialogueRewrite",
    "Exchange",
    "RewriteJudge",
    "RewriteSignatures",
    "rewrite_signatures",
]


class Exchange(BaseModel):
    """One exchange of a rewritten dialogue: a customer message and the supporter's reply with
    the code of the strategy it carries out (template; the strategy is typed per framework).

    Exchanges make the output alternate by construction and put a strategy on every supporter
    turn, for any LM (with the embedded engine, constrained decoding enforces the shape). A
    dialogue that opens with the supporter has an empty ``customer`` in its first exchange."""

    model_config = ConfigDict(extra="forbid")

    customer: str = Field(description="the customer's message; empty only when the supporter opens")
    supporter: str = Field(min_length=1, description="the supporter's reply")
    strategy: str = Field(description="the strategy code of the supporter's reply")


class ConductScreen(dspy.Signature):
    """You screen real customer-support chat logs before they are used as training material.
    Read the dialogue (personal data is already replaced by placeholders such as [Phone number])
    and decide two things: whether anyone uses abusive language (insults, threats, profanity
    aimed at a person), and whether the agent is impatient or disrespectful toward the customer
    (rude, dismissive, mocking, blaming). Ordinary frustration politely expressed is neither.
    Give a one-sentence reason."""

    dialogue: DialogueHistory = dspy.InputField(desc="the raw dialogue, personal data redacted")
    reason: str = dspy.OutputField(desc="one sentence on the conduct in this dialogue")
    abusive_language: bool = dspy.OutputField(desc="true when anyone uses abusive language")
    disrespectful_agent: bool = dspy.OutputField(
        desc="true when the agent is impatient or disrespectful"
    )


class DialogueRewrite(dspy.Signature):
    """You rewrite a real customer-support dialogue into a model dialogue that follows the
    support-strategy framework below. Keep the original meaning, facts and the customer's intent;
    keep every placeholder such as [Phone number] or [Order number] exactly as written and never
    invent personal data. Write the dialogue as exchanges: a customer message, then the supporter's
    reply, which carries out exactly one strategy and is labelled with its code. When the
    supporter opens the conversation, the first exchange has an empty customer message. Merge or
    split messages as needed, and recreate customer messages where needed so that they fit the
    customer and the flow. Open with a greeting and end with the supporter's proper closing when
    the framework has them. Drop system messages, transfers and third parties. Do not add notes,
    comments or explanations in parentheses after the turns."""

    dialogue: DialogueHistory = dspy.InputField(
        desc="the original dialogue, personal data redacted"
    )
    strategy_definitions: str = dspy.InputField(desc="the stages and strategies of the framework")
    exchanges: list[Exchange] = dspy.OutputField(
        desc="the rewritten dialogue as customer message -> supporter reply (strategy code) "
        "exchanges, in order"
    )


class RewriteJudge(dspy.Signature):
    """You review a rewritten customer-support dialogue whose supporter turns are labelled with
    strategy codes. Judge three criteria, each pass or fail with a one-sentence reason:
    (1) complete ending: the conversation reaches a natural, complete end rather than stopping
    mid-way; (2) strategy adherence: every supporter turn really does what its labelled strategy
    defines; (3) no noise: there are no system messages, transfer notices, bot prompts,
    annotations or third-party speakers."""

    dialogue: DialogueHistory = dspy.InputField(desc="the rewritten dialogue with strategy codes")
    strategy_definitions: str = dspy.InputField(desc="the strategies and what they mean")
    complete_ending_reason: str = dspy.OutputField()
    complete_ending: bool = dspy.OutputField()
    strategy_adherence_reason: str = dspy.OutputField()
    strategy_adherence: bool = dspy.OutputField()
    no_noise_reason: str = dspy.OutputField()
    no_noise: bool = dspy.OutputField()


PREFILTER_CRITERIA: tuple[str, ...] = ("abusive_language", "disrespectful_agent")
"""What the LLM pre-filter drops a dialogue for (either one true)."""

POSTFILTER_CRITERIA: tuple[str, ...] = ("complete_ending", "strategy_adherence", "no_noise")
"""What the post-filter judge checks (all must pass)."""

_ZH_INSTRUCTIONS: dict[str, str] = {
    "ConductScreen": (
        "你负责在真实客服聊天记录被用作训练素材之前进行筛查。阅读对话（个人信息已替换为"
        "[电话号码]等占位符），判断两件事：是否有人使用辱骂性语言（针对人的侮辱、威胁、脏话），"
        "以及客服是否对客户不耐烦或不尊重（粗鲁、敷衍、嘲讽、指责）。礼貌表达的一般不满不算。"
        "用一句话说明理由。"
    ),
    "DialogueRewrite": (
        "你把一段真实的客服对话改写成符合下列服务策略框架的示范对话。保留原意、事实和客户的意图；"
        "[电话号码]、[订单号]等占位符原样保留，绝不编造个人信息。对话按“客户消息 -> 客服回复”"
        "的轮次写出，每句客服回复只执行一个策略，并标注其代码；由客服开场时，第一轮的客户消息为空。"
        "可按需合并或拆分消息，必要时重新创作客户的话，使其符合客户身份和对话走向。"
        "框架有问候和结束策略时，以问候开场、以客服恰当的告别结束。"
        "去掉系统消息、转接提示和第三方。不要在对话后添加括号注释或说明。"
    ),
    "RewriteJudge": (
        "你负责审核一段改写后的客服对话，其中客服的每句话都标注了策略代码。"
        "对三项标准分别给出通过或不通过，并用一句话说明理由："
        "（1）结尾完整：对话自然、完整地结束，而不是中途停止；"
        "（2）策略遵循：每句客服回复确实做到了所标注策略的定义；"
        "（3）无噪声：没有系统消息、转接提示、机器人提示、注释或第三方发言。"
    ),
}

_ZH_FIELD_DESCS: dict[str, str] = {
    "dialogue": "对话（个人信息已脱敏）",
    "reason": "用一句话说明对话中的言行",
    "abusive_language": "有人使用辱骂性语言时为 true",
    "disrespectful_agent": "客服不耐烦或不尊重时为 true",
    "strategy_definitions": "框架的阶段与策略",
    "exchanges": "改写后的对话，按“客户消息 -> 客服回复（策略代码）”的轮次依次给出",
    **zh_judge_descs(POSTFILTER_CRITERIA),
}


@dataclass(frozen=True)
class RewriteSignatures:
    """The rewriting signatures of one framework and language."""

    prefilter: type[dspy.Signature]
    rewriter: type[dspy.Signature]
    judge: type[dspy.Signature]
    exchange_model: type[BaseModel]


def _localize(sig: type[dspy.Signature], language: Language) -> type[dspy.Signature]:
    if language != "zh":
        return sig
    return localized(sig, _ZH_INSTRUCTIONS[sig.__name__], _ZH_FIELD_DESCS)


def exchange_model(framework: Framework) -> type[BaseModel]:
    """:class:`Exchange` with ``strategy`` typed by the framework's codes, so a parse (or the
    embedded engine's constrained decoding) only admits valid strategies."""
    description = Exchange.model_fields["strategy"].description
    return create_model(
        "Exchange",
        __base__=Exchange,
        __doc__="A customer message and the supporter's reply with its strategy code.",
        strategy=(framework.strategy_literal, Field(description=description)),
    )


@lru_cache(maxsize=16)
def _build(framework: Framework, language: Language) -> RewriteSignatures:
    model = exchange_model(framework)
    rewriter = _localize(DialogueRewrite, language)
    rewriter = rewriter.with_updated_fields("exchanges", type_=list[model])  # type: ignore[valid-type]
    return RewriteSignatures(
        prefilter=_localize(ConductScreen, language),
        rewriter=rewriter,
        judge=_localize(RewriteJudge, language),
        exchange_model=model,
    )


def rewrite_signatures(
    framework: Framework | str = "csc", language: Language = "en"
) -> RewriteSignatures:
    """The pre-filter, rewriter and post-filter judge signatures for a framework and language."""
    return _build(as_framework(framework), check_language(language))
