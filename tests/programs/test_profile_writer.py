"""ProfileWriter through generate_profiles: LM descriptions arrive in order under concurrency."""

from __future__ import annotations

import dspy
import numpy as np

from csc.data.profiles import attribute_text, generate_profiles, sample_attributes
from csc.programs.profiles import lm_describer


def test_lm_descriptions_keep_profile_order_with_concurrent_requests():
    combos = [attribute_text(c) for c in sample_attributes(6, seed=3)]
    # Each answer names the occupation it was asked about, so a mix-up between threads shows.
    answers = {
        f"occupation: {a['occupation']}\n": {
            "description": f"You work as a {a['occupation']} and you want your card unblocked soon."
        }
        for a in combos
    }
    lm = dspy.utils.DummyLM(answers)
    with dspy.context(lm=lm):
        pool = generate_profiles(
            6,
            seed=3,
            describer=lm_describer("en"),
            embed=lambda t: np.eye(len(t)),
            concurrency=4,
        )
    assert pool.lm_descriptions == 6
    assert [p.description for p in pool.profiles] == [
        answers[f"occupation: {a['occupation']}\n"]["description"] for a in combos
    ]
    assert len(lm.history) == 6
