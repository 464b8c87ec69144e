"""Signatures of the supporter subtasks: strategy prediction, response generation and the ablation.

Every signature is built per framework (its ``strategy`` field is a ``Literal`` of that
framework's codes) and per language (``en`` or ``zh`` instructions and definitions), so another
taxonomy works unchanged. The instructions are what a support-quality expert would tell a new
agent; prompt optimizers (MIPROv2, GEPA) rewrite them.

Each builder also takes a ``prompt`` variant:

* ``full`` (the default) — expert instructions, field descriptions and, where a strategy is
  chosen, the framework's stage and strategy definitions: what a general LM needs to do the task.
* ``compact`` — the student prompt of a fine-tuned supporter: one short instruction, no field
  descriptions, no framework definitions (the responder gets the strategy code without its
  definition). The inputs and the typed outputs are the same, so the ``strategy`` output is still
  a ``Literal`` of the framework's codes and constrained decoding still guarantees a valid code.
  A student learns the framework from its training data, so repeating it on every training step
  and every inference call only costs time (see docs/finetuning.md for the measurements).

``StrategyPrediction``, ``ResponseGeneration``, ``DirectResponse`` and ``StrategyLabeling`` at
module level are the CSC / English / full versions; use the ``*_signature(framework, language,
prompt)`` builders for any other combination.
"""

from __future__ import annotations

from functools import lru_cache
from typing import get_args

import dspy

from csc.choices import PromptVariant
from csc.framework import Framework, Language, check_language
from csc.signatures.types import DialogueHistory, localized

__all__ = [
    "PROMPT_VARIANTS",
    "DirectResponse",
    "PromptVariant",
    "ResponseGeneration",
    "StrategyLabeling",
    "StrategyPrediction",
    "check_prompt_variant",
    "direct_response_signature",
    "response_generation_signature",
    "strategy_labeling_signature",
    "strategy_prediction_signature",
]

PROMPT_VARIANTS: tuple[PromptVariant, ...] = get_args(PromptVariant)

# The English prompts are the class docstrings below, each on one line: the text is what
# existing fine-tuned students were trained on, byte for byte (a wrapped docstring would put
# line breaks into it). Their ``strategy`` fields are typed per framework by the builders.


class _StrategyPrediction(dspy.Signature):
    """You are an experienced customer-support quality coach. Read the conversation so far and choose the support strategy the agent should use in their next reply. Follow the natural stage order (connect, identify the problem, explore solutions, resolve, maintain the relationship): open with a greeting, verify identity early when the request touches an account, respond to clear negative emotion before anything else, do not repeat the same strategy more than twice in a row, and close with thanks once the issue is handled. Pick exactly one strategy code from the framework below."""

    history: DialogueHistory = dspy.InputField(
        desc="The conversation so far; supporter turns show the strategy code they used."
    )
    strategy: str = dspy.OutputField(
        desc="Code of the strategy the supporter should use in the next reply."
    )


class _ResponseGeneration(dspy.Signature):
    """You are a professional customer-support agent. Write your next reply to the customer in 1-2 sentences, carrying out exactly the given strategy as its definition describes. Stay consistent with the conversation, sound natural rather than templated, never invent account facts, and politely point out requests that are unreasonable or impossible."""

    history: DialogueHistory = dspy.InputField(
        desc="The conversation so far; supporter turns show the strategy code they used."
    )
    strategy: str = dspy.InputField(desc="Code of the strategy the reply must carry out.")
    strategy_definition: str = dspy.InputField(
        desc="Definition of that strategy and how to tell it from similar ones."
    )
    response: str = dspy.OutputField(desc="The supporter's next reply (1-2 sentences).")


class _DirectResponse(dspy.Signature):
    """You are a professional customer-support agent. Write your next reply to the customer in 1-2 sentences. Be polite and helpful, stay consistent with the conversation, sound natural rather than templated, never invent account facts, and politely point out requests that are unreasonable or impossible."""

    history: DialogueHistory = dspy.InputField(
        desc="The conversation so far; supporter turns show the strategy code they used."
    )
    response: str = dspy.OutputField(desc="The supporter's next reply (1-2 sentences).")


class _StrategyLabeling(dspy.Signature):
    """You are an expert annotator of customer-support conversations. Given the conversation so far and the agent's next reply, label the reply with the one support strategy from the framework below that it carries out."""

    history: DialogueHistory = dspy.InputField(
        desc="The conversation so far; supporter turns show the strategy code they used."
    )
    response: str = dspy.InputField(desc="The supporter's reply to label.")
    strategy: str = dspy.OutputField(desc="Code of the strategy the reply carries out.")


_FRAMEWORK_HEADING = {
    "en": "Support strategies, grouped by conversation stage:",
    "zh": "按对话阶段划分的服务策略：",
}

# Chinese instructions and field descriptions, per template.
_ZH: dict[type[dspy.Signature], tuple[str, dict[str, str]]] = {
    _StrategyPrediction: (
        (
            "你是一名资深的客服质检教练。阅读目前为止的对话，为客服的下一句回复选择应当使用的"
            "服务策略。遵循对话阶段的自然顺序（建立联系、识别问题、寻求方案、解决确认、保持关"
            "系）：以礼貌问候开场；涉及账户时尽早确认身份；客户出现明显负面情绪时先做情感管理"
            "；同一策略不要连续使用超过两次；问题处理完毕后以感谢与告别结束。从下列框架中只选"
            "择一个策略代码。"
        ),
        {
            "history": "目前为止的对话；客服的每一轮标注了所用策略的代码。",
            "strategy": "客服下一句回复应当使用的策略代码。",
        },
    ),
    _ResponseGeneration: (
        (
            "你是一名专业的客服人员。请用 1-2 句话写出你对客户的下一句回复，严格按照给定"
            "策略的定义来执行该策略。与上文保持一致，表达自然、不要套用固定句式，不要编造账户"
            "信息；对不合理或无法满足的要求要礼貌地指出。"
        ),
        {
            "history": "目前为止的对话；客服的每一轮标注了所用策略的代码。",
            "strategy": "回复必须执行的策略代码。",
            "strategy_definition": "该策略的定义及其与相近策略的区分要点。",
            "response": "客服的下一句回复（1-2 句话）。",
        },
    ),
    _DirectResponse: (
        (
            "你是一名专业的客服人员。请用 1-2 句话写出你对客户的下一句回复。礼貌、有帮助"
            "，与上文保持一致，表达自然、不要套用固定句式，不要编造账户信息；对不合理或无法满"
            "足的要求要礼貌地指出。"
        ),
        {
            "history": "目前为止的对话；客服的每一轮标注了所用策略的代码。",
            "response": "客服的下一句回复（1-2 句话）。",
        },
    ),
    _StrategyLabeling: (
        (
            "你是一名客服对话标注专家。根据目前为止的对话和客服的下一句回复，从下列框架中选出"
            "该回复所执行的唯一一个服务策略。"
        ),
        {
            "history": "目前为止的对话；客服的每一轮标注了所用策略的代码。",
            "response": "需要标注的客服回复。",
            "strategy": "该回复所执行的策略代码。",
        },
    ),
}

# The compact (student) instructions: one sentence naming the task, nothing the weights of a
# fine-tuned model already carry. Changing them changes what existing compact students were
# trained on, so treat them as part of the trained model's interface.
_COMPACT: dict[str, dict[type[dspy.Signature], str]] = {
    "en": {
        _StrategyPrediction: "Choose the strategy code of the support agent's next reply.",
        _ResponseGeneration: "Write the support agent's next reply using the given strategy.",
        _DirectResponse: "Write the support agent's next reply.",
        _StrategyLabeling: "Label the support agent's reply with its strategy code.",
    },
    "zh": {
        _StrategyPrediction: "选择客服下一句回复的策略代码。",
        _ResponseGeneration: "用给定策略写出客服的下一句回复。",
        _DirectResponse: "写出客服的下一句回复。",
        _StrategyLabeling: "标注客服回复所用的策略代码。",
    },
}


def check_prompt_variant(prompt: str) -> PromptVariant:
    """``prompt`` itself if it names a variant (``full`` or ``compact``), else a ValueError."""
    if prompt not in PROMPT_VARIANTS:
        raise ValueError(f"unknown prompt variant {prompt!r}; use 'full' or 'compact'")
    return prompt  # type: ignore[return-value]


def _build(
    template: type[dspy.Signature],
    language: Language,
    prompt: PromptVariant,
    framework: Framework | None = None,
) -> type[dspy.Signature]:
    """``template`` in ``language`` and the ``prompt`` variant; with a framework, its ``strategy``
    output is typed by the framework's codes and the full instructions carry its definitions."""
    language = check_language(language)
    if check_prompt_variant(prompt) == "compact":
        # Compact fields carry no description: DSPy then renders just the name and type.
        sig = localized(
            template, _COMPACT[language][template], {f: f"${{{f}}}" for f in template.fields}
        )
        if "strategy_definition" in sig.fields:  # framework text a student learns in training
            sig = sig.delete("strategy_definition")
    elif language == "zh":
        sig = localized(template, *_ZH[template])
    else:
        sig = template
    if framework is not None:
        sig = sig.with_updated_fields("strategy", type_=framework.strategy_literal)
        if prompt == "full":
            # Definitions live in the instructions rather than in an input field, so few-shot
            # demos do not repeat them and optimizers see them when they rewrite the prompt.
            sig = sig.with_instructions(
                f"{sig.instructions}\n\n{_FRAMEWORK_HEADING[language]}\n{framework.render(language)}"
            )
    return sig


@lru_cache(maxsize=64)
def strategy_prediction_signature(
    framework: Framework | None = None, language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History -> the code of the strategy the supporter should use next (typed by the framework)."""
    return _build(_StrategyPrediction, language, prompt, framework or Framework.load("csc"))


@lru_cache(maxsize=64)
def response_generation_signature(
    language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History + a strategy code (and, in the full prompt, its definition) -> the supporter's reply."""
    return _build(_ResponseGeneration, language, prompt)


@lru_cache(maxsize=64)
def direct_response_signature(
    language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History -> the supporter's reply, with no explicit strategy (the ablation)."""
    return _build(_DirectResponse, language, prompt)


@lru_cache(maxsize=64)
def strategy_labeling_signature(
    framework: Framework | None = None, language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History + a supporter reply -> the strategy code the reply carries out."""
    return _build(_StrategyLabeling, language, prompt, framework or Framework.load("csc"))


StrategyPrediction = strategy_prediction_signature()
ResponseGeneration = response_generation_signature()
DirectResponse = direct_response_signature()
StrategyLabeling = strategy_labeling_signature()
