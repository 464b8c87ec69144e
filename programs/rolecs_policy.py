"""The RoleCS conversation policy: the framework's rules for the supporter assistant's strategy
choices (open with the opening strategy, verify identity soon after, never repeat a strategy too
often, end with the closing strategy), checked and enforced in code by :class:`StrategyPolicy`,
and rendered for the assistant's prompt by :func:`policy_definitions`."""

from __future__ import annotations

from dataclasses import dataclass

from csc.framework import Framework, Language


@dataclass(frozen=True)
class PolicyViolation:
    """A strategy choice that breaks the policy: its kind and the feedback for a re-ask."""

    kind: str  # "opening", "verification", "repeat" or "closing"
    feedback: str


class StrategyPolicy:
    """The framework's conversation policy (``framework.policy``), checked and enforced in code.

    Rules, each skipped when the framework's policy leaves its part unset:

    * ``opening``: the first supporter turn uses the opening strategy, and no later turn does;
    * ``verification``: the verification strategy is used within ``verification_within``
      supporter turns after the opening, and before the closing strategy;
    * ``max_repeat``: no strategy more than ``max_repeat`` times in a row;
    * ``closing``: the dialogue ends with the closing strategy (enforced by :class:`RoleCS`).
    """

    def __init__(self, framework: Framework, language: Language = "en") -> None:
        self.framework = framework
        self.policy = framework.policy
        self.language = language

    def _name(self, code: str) -> str:
        s = self.framework.strategy(code)
        return f"{code} ({s.display_name(self.language)})"

    def check(self, chosen: str, previous: list[str]) -> PolicyViolation | None:
        """The first rule ``chosen`` breaks after the supporter strategies ``previous``, if any."""
        p, k = self.policy, len(previous)
        zh = self.language == "zh"
        if p.opening:
            if k == 0 and chosen != p.opening:
                return PolicyViolation(
                    "opening",
                    f"第一句回复必须使用 {self._name(p.opening)}。"
                    if zh
                    else f"The first reply must use {self._name(p.opening)}.",
                )
            if k > 0 and chosen == p.opening:
                return PolicyViolation(
                    "opening",
                    f"{self._name(p.opening)} 只用于开场，请选择其他策略。"
                    if zh
                    else f"{self._name(p.opening)} is only for the opening; choose another strategy.",
                )
        if p.verification and p.verification not in previous:
            offset = 1 if p.opening else 0
            position = k - offset + 1  # 1 = first supporter turn after the opening
            due = k >= offset and position >= p.verification_within
            if chosen != p.verification and (due or chosen == p.closing):
                return PolicyViolation(
                    "verification",
                    f"现在必须使用 {self._name(p.verification)} 确认客户身份。"
                    if zh
                    else f"Now use {self._name(p.verification)}: the customer's identity must be "
                    f"verified within {p.verification_within} replies after the opening.",
                )
        if (
            p.max_repeat
            and k >= p.max_repeat
            and all(c == chosen for c in previous[-p.max_repeat :])
        ):
            return PolicyViolation(
                "repeat",
                f"{self._name(chosen)} 已连续使用 {p.max_repeat} 次，请换一个策略。"
                if zh
                else f"{self._name(chosen)} was used {p.max_repeat} times in a row; choose a "
                "different strategy.",
            )
        return None

    def correct(self, violation: PolicyViolation, chosen: str, previous: list[str]) -> str:
        """A strategy that satisfies the rule ``violation`` names."""
        p = self.policy
        if violation.kind == "opening" and not previous and p.opening:
            return p.opening
        if violation.kind == "verification" and p.verification:
            return p.verification
        return self.alternative(chosen, previous)

    def alternative(self, avoid: str, previous: list[str]) -> str:
        """The most plausible other strategy: one of the current or the next stage, never the
        opening, closing or fallback strategy, nor one that would repeat too often."""
        fw, p = self.framework, self.policy
        stages = (fw.stage_index(code) for code in reversed(previous))
        current = next((idx for idx in stages if idx is not None), 0)
        banned = {avoid, p.opening, p.closing}
        if (
            p.max_repeat
            and len(previous) >= p.max_repeat
            and len(set(previous[-p.max_repeat :])) == 1
        ):
            banned.add(previous[-1])
        candidates = [
            s.code
            for s in fw.strategies
            if s.code not in banned and not s.fallback and s.stage is not None
        ]
        if not candidates:
            candidates = [c for c in fw.codes if c not in banned] or [avoid]

        def rank(code: str) -> tuple[int, int, int]:
            idx = fw.stage_index(code) or 0
            return (
                0 if idx in (current, current + 1) else 1,
                abs(idx - current),
                fw.codes.index(code),
            )

        return min(candidates, key=rank)


def policy_definitions(framework: Framework, language: Language = "en") -> str:
    """The framework's stages and strategies followed by its conversation policy in one line
    (what the supporter assistant reads as ``strategy_definitions``)."""
    fw, p, zh = framework, framework.policy, language == "zh"
    lines = [fw.render(language)]
    rules = []
    if p.opening:
        rules.append(f"以 {p.opening} 开场" if zh else f"open with {p.opening}")
    if p.verification:
        rules.append(
            f"开场后 {p.verification_within} 句内使用 {p.verification}"
            if zh
            else f"use {p.verification} within {p.verification_within} replies after the opening"
        )
    if p.closing:
        rules.append(f"以 {p.closing} 结束" if zh else f"end with {p.closing}")
    if p.max_repeat:
        rules.append(
            f"同一策略连续不超过 {p.max_repeat} 次"
            if zh
            else f"never the same strategy more than {p.max_repeat} times in a row"
        )
    if rules:
        lines.append(("对话规范：" if zh else "Policy: ") + ("；" if zh else "; ").join(rules))
    return "\n".join(lines)
