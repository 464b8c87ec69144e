"""csc compare with a real fine-tuned supporter: a LoRA adapter trained here on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe_dict
from datasets import Dataset, DatasetDict

from csc.data.io import read_dialogues
from csc.eval.compare import compare_supporters
from csc.finetune.recipes import Recipe
from csc.finetune.train import METADATA_FILE, train
from csc.lm import LMSpec

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "sample_en.json"

pytestmark = pytest.mark.slow  # trains an adapter and runs two engines


def _sft_folder(out: Path) -> Path:
    answer = "[[ ## strategy ## ]]\nGT\n\n[[ ## completed ## ]]\n"
    rows = [
        {
            "dialogue_id": f"d{i}",
            "turn": 0,
            "strategy": "GT",
            "task": "strategy",
            "messages": [
                {
                    "role": "system",
                    "content": "You are a supporter. Respond with the output fields.",
                },
                {
                    "role": "user",
                    "content": "[[ ## history ## ]]\n(The conversation has not started.)",
                },
                {"role": "assistant", "content": answer},
            ],
        }
        for i in range(4)
    ]
    DatasetDict(train=Dataset.from_list(rows), validation=Dataset.from_list(rows[:2])).save_to_disk(
        str(out)
    )
    (out / "export.json").write_text(json.dumps({"framework": "csc", "task": "strategy"}))
    return out


def test_compare_base_model_with_its_trained_adapter(tiny_model_dir: Path, tmp_path: Path):
    run = tmp_path / "ft"
    recipe = Recipe.from_dict(tiny_recipe_dict(tiny_model_dir))
    train(_sft_folder(tmp_path / "sft"), recipe, run, device="cpu")
    assert json.loads((run / METADATA_FILE).read_text())["base_model"] == f"local:{tiny_model_dir}"

    dialogues = list(read_dialogues(SAMPLE))[:1]
    results = {}
    comparison = compare_supporters(
        dialogues,
        {"base": "zero-shot", "tuned": f"finetuned:{run}"},
        lm=LMSpec(model=f"local:{tiny_model_dir}", max_tokens=8, temperature=0.0),
        context="ref",
        limit=2,
        num_threads=1,
        with_bertscore=False,
        progress=False,
        cache_dir=tmp_path / "cache",
        on_result=lambda name, spec, result: results.setdefault(name, result),
    )
    assert [(r.supporter, r.context) for r in comparison.rows] == [
        ("base", "reference"),
        ("tuned", "reference"),
    ]
    # Same turns for both; the tuned supporter ran on the adapter's own LM, not the base LM.
    assert {r.turns for r in comparison.rows} == {2}
    base, tuned = comparison.rows
    assert (base.lm, tuned.lm) == (f"local/{tiny_model_dir.name}", f"finetuned/{run.name}")
    for name in ("base", "tuned"):
        preds = results[name].contexts["reference"].records
        assert len(preds) == 2
        assert all(p.completion_tokens for p in preds), [p.error for p in preds]
