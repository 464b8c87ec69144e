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
from typing import Any, get_args

import dspy

from csc.choices import PromptVariant
from csc.framework import Framework, Language
from csc.signatures.types import DialogueHistory

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

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "predict": (
            "You are an experienced customer-support quality coach. Read the conversation so far "
            "and choose the support strategy the agent should use in their next reply. Follow "
            "the natural stage order (connect, identify the problem, explore solutions, resolve, "
            "maintain the relationship): open with a greeting, verify identity early when the "
            "request touches an account, respond to clear negative emotion before anything else, "
            "do not repeat the same strategy more than twice in a row, and close with thanks once "
            "the issue is handled. Pick exactly one strategy code from the framework below."
        ),
        "respond": (
            "You are a professional customer-support agent. Write your next reply to the customer "
            "in 1-2 sentences, carrying out exactly the given strategy as its definition "
            "describes. Stay consistent with the conversation, sound natural rather than "
            "templated, never invent account facts, and politely point out requests that are "
            "unreasonable or impossible."
        ),
        "direct": (
            "You are a professional customer-support agent. Write your next reply to the customer "
            "in 1-2 sentences. Be polite and helpful, stay consistent with the conversation, "
            "sound natural rather than templated, never invent account facts, and politely point "
            "out requests that are unreasonable or impossible."
        ),
        "label": (
            "You are an expert annotator of customer-support conversations. Given the "
            "conversation so far and the agent's next reply, label the reply with the one support "
            "strategy from the framework below that it carries out."
        ),
        "framework": "Support strategies, grouped by conversation stage:",
        "history": "The conversation so far; supporter turns show the strategy code they used.",
        "strategy_out": "Code of the strategy the supporter should use in the next reply.",
        "strategy_in": "Code of the strategy the reply must carry out.",
        "definition": "Definition of that strategy and how to tell it from similar ones.",
        "response": "The supporter's next reply (1-2 sentences).",
        "reply_in": "The supporter's reply to label.",
        "label_out": "Code of the strategy the reply carries out.",
    },
    "zh": {
        "predict": (
            "你是一名资深的客服质检教练。阅读目前为止的对话，为客服的下一句回复选择应当使用的"
            "服务策略。遵循对话阶段的自然顺序（建立联系、识别问题、寻求方案、解决确认、保持关系）："
            "以礼貌问候开场；涉及账户时尽早确认身份；客户出现明显负面情绪时先做情感管理；"
            "同一策略不要连续使用超过两次；问题处理完毕后以感谢与告别结束。"
            "从下列框架中只选择一个策略代码。"
        ),
        "respond": (
            "你是一名专业的客服人员。请用 1-2 句话写出你对客户的下一句回复，"
            "严格按照给定策略的定义来执行该策略。与上文保持一致，表达自然、不要套用固定句式，"
            "不要编造账户信息；对不合理或无法满足的要求要礼貌地指出。"
        ),
        "direct": (
            "你是一名专业的客服人员。请用 1-2 句话写出你对客户的下一句回复。礼貌、有帮助，"
            "与上文保持一致，表达自然、不要套用固定句式，不要编造账户信息；"
            "对不合理或无法满足的要求要礼貌地指出。"
        ),
        "label": (
            "你是一名客服对话标注专家。根据目前为止的对话和客服的下一句回复，"
            "从下列框架中选出该回复所执行的唯一一个服务策略。"
        ),
        "framework": "按对话阶段划分的服务策略：",
        "history": "目前为止的对话；客服的每一轮标注了所用策略的代码。",
        "strategy_out": "客服下一句回复应当使用的策略代码。",
        "strategy_in": "回复必须执行的策略代码。",
        "definition": "该策略的定义及其与相近策略的区分要点。",
        "response": "客服的下一句回复（1-2 句话）。",
        "reply_in": "需要标注的客服回复。",
        "label_out": "该回复所执行的策略代码。",
    },
}


# The compact (student) instructions: one sentence naming the task, nothing the weights of a
# fine-tuned model already carry. Changing them changes what existing compact students were
# trained on, so treat them as part of the trained model's interface.
_COMPACT_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "predict": "Choose the strategy code of the support agent's next reply.",
        "respond": "Write the support agent's next reply using the given strategy.",
        "direct": "Write the support agent's next reply.",
        "label": "Label the support agent's reply with its strategy code.",
    },
    "zh": {
        "predict": "选择客服下一句回复的策略代码。",
        "respond": "用给定策略写出客服的下一句回复。",
        "direct": "写出客服的下一句回复。",
        "label": "标注客服回复所用的策略代码。",
    },
}


def _text(language: str) -> dict[str, str]:
    if language not in _TEXT:
        raise ValueError(f"unsupported language {language!r}; use 'en' or 'zh'")
    return _TEXT[language]


def check_prompt_variant(prompt: str) -> PromptVariant:
    """``prompt`` itself if it names a variant (``full`` or ``compact``), else a ValueError."""
    if prompt not in PROMPT_VARIANTS:
        raise ValueError(f"unknown prompt variant {prompt!r}; use 'full' or 'compact'")
    return prompt  # type: ignore[return-value]


def _instructions(task: str, language: str, prompt: str) -> str:
    if check_prompt_variant(prompt) == "compact":
        _text(language)  # same language check as the full variant
        return _COMPACT_TEXT[language][task]
    return _text(language)[task]


def _desc(key: str, language: str, prompt: str) -> dict[str, str]:
    # Compact fields carry no description: DSPy then renders just the name and type.
    return {} if prompt == "compact" else {"desc": _text(language)[key]}


def _with_framework(instructions: str, framework: Framework, language: Language) -> str:
    # Definitions live in the instructions rather than in an input field, so few-shot demos do
    # not repeat them and optimizers see them when they rewrite the prompt.
    text = _text(language)
    return f"{instructions}\n\n{text['framework']}\n{framework.render(language)}"


def _history_field(language: str, prompt: str) -> tuple[type, Any]:
    return (DialogueHistory, dspy.InputField(**_desc("history", language, prompt)))


@lru_cache(maxsize=64)
def strategy_prediction_signature(
    framework: Framework | None = None, language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History -> the code of the strategy the supporter should use next (typed by the framework)."""
    framework = framework or Framework.load("csc")
    instructions = _instructions("predict", language, prompt)
    return dspy.make_signature(
        {
            "history": _history_field(language, prompt),
            "strategy": (
                framework.strategy_literal,
                dspy.OutputField(**_desc("strategy_out", language, prompt)),
            ),
        },
        instructions if prompt == "compact" else _with_framework(instructions, framework, language),
        signature_name="StrategyPrediction",
    )


@lru_cache(maxsize=64)
def response_generation_signature(
    framework: Framework | None = None, language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History + a strategy code (and, in the full prompt, its definition) -> the supporter's reply."""
    fields: dict[str, Any] = {
        "history": _history_field(language, prompt),
        "strategy": (str, dspy.InputField(**_desc("strategy_in", language, prompt))),
    }
    if prompt != "compact":  # the definition is framework text a student learns in training
        fields["strategy_definition"] = (str, dspy.InputField(desc=_text(language)["definition"]))
    fields["response"] = (str, dspy.OutputField(**_desc("response", language, prompt)))
    return dspy.make_signature(
        fields, _instructions("respond", language, prompt), signature_name="ResponseGeneration"
    )


@lru_cache(maxsize=64)
def direct_response_signature(
    framework: Framework | None = None, language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History -> the supporter's reply, with no explicit strategy (the ablation)."""
    return dspy.make_signature(
        {
            "history": _history_field(language, prompt),
            "response": (str, dspy.OutputField(**_desc("response", language, prompt))),
        },
        _instructions("direct", language, prompt),
        signature_name="DirectResponse",
    )


@lru_cache(maxsize=64)
def strategy_labeling_signature(
    framework: Framework | None = None, language: Language = "en", prompt: PromptVariant = "full"
) -> type[dspy.Signature]:
    """History + a supporter reply -> the strategy code the reply carries out."""
    framework = framework or Framework.load("csc")
    instructions = _instructions("label", language, prompt)
    return dspy.make_signature(
        {
            "history": _history_field(language, prompt),
            "response": (str, dspy.InputField(**_desc("reply_in", language, prompt))),
            "strategy": (
                framework.strategy_literal,
                dspy.OutputField(**_desc("label_out", language, prompt)),
            ),
        },
        instructions if prompt == "compact" else _with_framework(instructions, framework, language),
        signature_name="StrategyLabeling",
    )


StrategyPrediction = strategy_prediction_signature()
ResponseGeneration = response_generation_signature()
DirectResponse = direct_response_signature()
StrategyLabeling = strategy_labeling_signature()
