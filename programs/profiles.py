"""The profile-writing program: an LM turns a customer's structured attributes into the
second-person description the RoleCS agents read (signature ``ProfileDescriber``)."""

from __future__ import annotations

import hashlib
from typing import Any

import dspy

from csc.data.profiles import Describer
from csc.framework import Language
from csc.signatures.rolecs import rolecs_signatures


class ProfileWriter(dspy.Module):
    """Describes one customer profile in the second person from its attributes."""

    def __init__(
        self,
        language: Language = "en",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ):
        super().__init__()
        self.describe = dspy.Predict(rolecs_signatures("csc", language).profile_describer)
        settings = {"temperature": temperature, "max_tokens": max_tokens}
        self.config: dict[str, Any] = {k: v for k, v in settings.items() if v is not None}

    def forward(self, attributes: dict[str, str]) -> dspy.Prediction:
        """A prediction whose ``description`` describes the profile with ``attributes``."""
        lines = "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in attributes.items())
        # A rollout id from the attributes keeps sampling reproducible per profile.
        rollout_id = int(hashlib.sha256(lines.encode()).hexdigest()[:12], 16)
        return self.describe(attributes=lines, config={"rollout_id": rollout_id, **self.config})


def lm_describer(
    language: Language = "en", temperature: float | None = None, max_tokens: int | None = None
) -> Describer:
    """A describer for :func:`csc.data.profiles.generate_profiles` that asks the current DSPy LM
    through :class:`ProfileWriter`."""
    writer = ProfileWriter(language, temperature, max_tokens)
    return lambda attrs: writer(attributes=attrs).description
