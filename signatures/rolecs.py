"""Signatures of the RoleCS agents: planner, supporter assistant, supporter (``SupporterReply``:
not to be confused with the supporter program :class:`csc.programs.supporter.Supporter`), customer
assistant, customer, profile describer and dialogue judge.

The class docstrings are the prompt seeds an optimizer rewrites, so they say what a support-quality
expert would say. Strategy and stage fields are typed with the framework's own ``Literal`` codes, so
the classes below are templates: use :func:`rolecs_signatures` to get the signatures of a given
framework and language (``en`` or ``zh``; Chinese instructions and field descriptions).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import dspy

from csc.data.turns import as_framework
from csc.framework import Framework, Language, check_language
from csc.signatures.types import DialogueHistory, localized, zh_judge_descs

# ----------------------------------------------------------------------------- templates


class Planner(dspy.Signature):
    """You plan a realistic customer-support conversation. Given a customer's profile and a service topic, write the situation that brings this customer
    to the support chat: what happened, what they want, relevant concrete details (product, amounts,
    dates, what they already tried), and the mood they arrive in. Make the situation fit the
    profile. Also state the customer's goal for the conversation; a goal may include a request the
    company cannot reasonably grant, so the supporter has something to point out."""

    profile: str = dspy.InputField(desc="who the customer is, in the second person")
    topic: str = dspy.InputField(desc="the service topic of the conversation")
    scenario: str = dspy.OutputField(desc="the situation, 2-4 sentences, third person")
    goal: str = dspy.OutputField(desc="what the customer wants to achieve, one sentence")


class SupporterAssistant(dspy.Signature):
    """You coach a customer-support agent. Read the scenario and the conversation so far, then
    choose the single communication strategy the agent should use in the next reply, and the stage
    of the conversation it belongs to. Move through the stages in their order: build rapport,
    understand the problem (restate it, ask targeted questions, calm negative emotions first),
    explore a solution, carry it out and confirm it worked, then close well. Respect the
    conversation policy listed with the definitions, and vary strategies instead of repeating one.
    Close only when the customer's issue is settled or the customer is leaving."""

    # What every call shares comes first (definitions), then what a dialogue keeps (scenario),
    # then the growing history: a prefix-caching LM (the embedded engine, vLLM, hosted prompt
    # caches) then only reads the new turns on each call.
    strategy_definitions: str = dspy.InputField(
        desc="the stages, their strategies and the conversation policy"
    )
    scenario: str = dspy.InputField(desc="the situation behind the conversation")
    history: DialogueHistory = dspy.InputField(
        desc="the conversation so far; supporter turns show their strategy code"
    )
    feedback: str = dspy.InputField(desc="policy feedback on a previous choice, or 'none'")
    stage: str = dspy.OutputField(desc="the stage of the next supporter reply")
    strategy: str = dspy.OutputField(desc="the strategy code of the next supporter reply")


class SupporterReply(dspy.Signature):
    """You are a professional customer-support agent. Write your
    next reply using exactly the given communication strategy. Be polite, specific and concise:
    one or two sentences. Do not promise what the company cannot do: when the customer asks for
    something unreasonable or impossible, say so kindly and offer what is possible instead. Vary
    your wording; do not repeat earlier sentences."""

    scenario: str = dspy.InputField(desc="the situation behind the conversation")
    # The history goes before the strategy, which changes every turn (prefix caching, above).
    history: DialogueHistory = dspy.InputField(desc="the conversation so far")
    strategy: str = dspy.InputField(desc="the strategy to use now, with its definition")
    reply: str = dspy.OutputField(desc="the supporter's reply, 1-2 sentences")


class CustomerAssistant(dspy.Signature):
    """You direct a simulated customer in a support conversation. Given the scenario, the
    customer's goal and profile, and the conversation so far, say in one sentence what the customer
    should do next: share a detail, ask a question, push back, react emotionally in character, or
    accept. Keep the customer moving toward the goal; once the issue is settled or enough has been
    said, direct the customer to wrap up and say goodbye naturally."""

    scenario: str = dspy.InputField(desc="the situation behind the conversation")
    goal: str = dspy.InputField(desc="what the customer wants to achieve")
    profile: str = dspy.InputField(desc="who the customer is")
    history: DialogueHistory = dspy.InputField(desc="the conversation so far")
    direction: str = dspy.OutputField(desc="the customer's next move, one sentence")


class Customer(dspy.Signature):
    """You play the customer described by the profile, chatting with a support agent. Follow the
    direction for your next move and speak in character: one short, colloquial sentence, the way
    this person would type it. Never speak as the agent. Say whether the conversation is finished
    (you have said goodbye or have nothing more to ask) and why."""

    profile: str = dspy.InputField(desc="who you are")
    scenario: str = dspy.InputField(desc="your situation")
    history: DialogueHistory = dspy.InputField(desc="the conversation so far")
    direction: str = dspy.InputField(desc="what to do in this message")
    utterance: str = dspy.OutputField(desc="your message, one colloquial sentence")
    finished: bool = dspy.OutputField(desc="true when the conversation is over for you")
    reason: str = dspy.OutputField(desc="why the conversation is or is not finished, briefly")


class ProfileDescriber(dspy.Signature):
    """Turn a structured customer profile into a short description addressed to the customer in
    the second person ("You are ..."), 2-3 sentences. Mention every attribute naturally, including
    how the person communicates and feels right now, so that someone can role-play them."""

    attributes: str = dspy.InputField(desc="the profile attributes, one 'name: value' per line")
    description: str = dspy.OutputField(desc="the second-person description")


class DialogueJudge(dspy.Signature):
    """You review a synthetic customer-support dialogue whose supporter turns are labelled with
    strategy codes. Judge five criteria, each pass or fail with a one-sentence reason:
    (1) strategy adherence: every supporter reply really does what its labelled strategy defines;
    (2) unreasonable demands: when the customer asks for something unreasonable or impossible, the
    supporter points it out instead of agreeing (pass if there is no such request);
    (3) natural replies: replies read like a real support chat, without mechanical or off-topic
    text; (4) varied expression: the supporter does not reuse fixed sentence patterns;
    (5) role consistency: the supporter and the customer stay in their own roles throughout."""

    strategy_definitions: str = dspy.InputField(desc="the strategies and what they mean")
    scenario: str = dspy.InputField(desc="the situation behind the conversation")
    dialogue: DialogueHistory = dspy.InputField(desc="the dialogue with strategy codes")
    strategy_adherence_reason: str = dspy.OutputField()
    strategy_adherence: bool = dspy.OutputField()
    unreasonable_demands_reason: str = dspy.OutputField()
    unreasonable_demands: bool = dspy.OutputField()
    natural_replies_reason: str = dspy.OutputField()
    natural_replies: bool = dspy.OutputField()
    varied_expression_reason: str = dspy.OutputField()
    varied_expression: bool = dspy.OutputField()
    role_consistency_reason: str = dspy.OutputField()
    role_consistency: bool = dspy.OutputField()


JUDGE_CRITERIA: tuple[str, ...] = (
    "strategy_adherence",
    "unreasonable_demands",
    "natural_replies",
    "varied_expression",
    "role_consistency",
)
"""The five RoleCS quality criteria, in the order the judge answers them."""

# ----------------------------------------------------------------------------- Chinese text

_ZH_INSTRUCTIONS: dict[str, str] = {
    "Planner": (
        "你策划一段真实的客服对话。根据客户画像和服务主题，写出客户来咨询的情境："
        "发生了什么、想要什么、相关的具体细节（产品、金额、日期、已尝试的做法）以及来时的情绪。"
        "情境要符合画像。同时写出客户在这次对话中的目标；目标可以包含公司无法合理满足的要求，"
        "以便客服指出。"
    ),
    "SupporterAssistant": (
        "你是客服人员的教练。阅读情境和目前的对话，为客服的下一句回复选择唯一一个沟通策略，"
        "并给出它所属的阶段。按阶段顺序推进：建立联系，理解问题（复述、针对性追问、先安抚负面情绪），"
        "寻求解决方案，实施并确认解决，最后妥善结束。遵守定义后列出的对话规范，策略要有变化，"
        "不要反复使用同一个。只有在客户问题已解决或客户要离开时才结束对话。"
    ),
    "SupporterReply": (
        "你是一名专业客服。严格使用给定的沟通策略写出你的下一句回复。"
        "礼貌、具体、简洁：一到两句话。不要承诺公司做不到的事：客户提出不合理或无法实现的要求时，"
        "委婉指出并提供可行的替代方案。用词要有变化，不要重复之前的句子。"
    ),
    "CustomerAssistant": (
        "你在指导一位模拟客户进行客服对话。根据情境、客户目标、客户画像和目前的对话，"
        "用一句话说明客户下一步该做什么：补充细节、提问、表示不满、按性格表达情绪或接受方案。"
        "让客户朝目标推进；问题解决或该说的都说完后，引导客户自然地收尾并道别。"
    ),
    "Customer": (
        "你扮演画像中描述的客户，正在和客服聊天。按照本轮指引行动并保持人设："
        "用一句简短、口语化的话，像这个人平时打字那样说。不要以客服的身份说话。"
        "说明对话是否已经结束（你已道别或没有其他问题）以及原因。"
    ),
    "ProfileDescriber": (
        "把结构化的客户画像改写成以第二人称（“你是……”）称呼客户的简短描述，两到三句话。"
        "自然地提到每个属性，包括此人的沟通方式和当前情绪，以便他人扮演。"
    ),
    "DialogueJudge": (
        "你负责审核一段合成的客服对话，其中客服的每句话都标注了策略代码。"
        "对五项标准分别给出通过或不通过，并用一句话说明理由："
        "（1）策略遵循：每句客服回复确实做到了所标注策略的定义；"
        "（2）识别不合理要求：客户提出不合理或无法实现的要求时，客服予以指出而不是答应（没有此类要求则通过）；"
        "（3）回复自然：回复像真实的客服聊天，没有机械或离题的内容；"
        "（4）表达多样：客服没有反复使用固定句式；"
        "（5）角色一致：客服和客户始终保持各自的角色。"
    ),
}

_ZH_FIELD_DESCS: dict[str, str] = {
    "profile": "客户画像（第二人称）",
    "topic": "对话的服务主题",
    "scenario": "对话背后的情境",
    "goal": "客户想达成的目标，一句话",
    "history": "目前的对话",
    "strategy_definitions": "各阶段、其策略及对话规范",
    "feedback": "对上一次选择的策略规范反馈，没有则为 none",
    "stage": "下一句客服回复所属的阶段",
    "strategy": "策略",
    "reply": "客服的回复，一到两句话",
    "direction": "客户下一步的行动，一句话",
    "utterance": "你的消息，一句口语化的话",
    "finished": "对话对你来说已结束时为 true",
    "reason": "对话是否结束的原因，简短",
    "attributes": "画像属性，每行一个“名称: 值”",
    "description": "第二人称描述",
    "dialogue": "带策略代码的对话",
    **zh_judge_descs(JUDGE_CRITERIA),
}


@dataclass(frozen=True)
class RoleCSSignatures:
    """The RoleCS signatures of one framework and language."""

    planner: type[dspy.Signature]
    supporter_assistant: type[dspy.Signature]
    supporter: type[dspy.Signature]
    customer_assistant: type[dspy.Signature]
    customer: type[dspy.Signature]
    profile_describer: type[dspy.Signature]
    judge: type[dspy.Signature]


def _localize(template: type[dspy.Signature], language: Language) -> type[dspy.Signature]:
    if language != "zh":
        return template
    return localized(template, _ZH_INSTRUCTIONS[template.__name__], _ZH_FIELD_DESCS)


@lru_cache(maxsize=16)
def _build(framework: Framework, language: Language) -> RoleCSSignatures:
    assistant = _localize(SupporterAssistant, language)
    # The assistant's answer is typed with the framework's own codes, so a parse (or, with the
    # embedded engine, constrained decoding) only admits valid strategies and stages.
    assistant = assistant.with_updated_fields("strategy", type_=framework.strategy_literal)
    assistant = assistant.with_updated_fields("stage", type_=framework.stage_literal)
    return RoleCSSignatures(
        planner=_localize(Planner, language),
        supporter_assistant=assistant,
        supporter=_localize(SupporterReply, language),
        customer_assistant=_localize(CustomerAssistant, language),
        customer=_localize(Customer, language),
        profile_describer=_localize(ProfileDescriber, language),
        judge=_localize(DialogueJudge, language),
    )


def rolecs_signatures(
    framework: Framework | str = "csc", language: Language = "en"
) -> RoleCSSignatures:
    """The seven RoleCS signatures for a framework (object, name or YAML path) and language."""
    return _build(as_framework(framework), check_language(language))
