#!/usr/bin/env bash
# The whole loop: optimized prompts make the fine-tuning data.
#
#   1. optimize   RoleCS's supporter agents on the labelled dialogues (csc optimize --program rolecs)
#   2. synthesize new dialogues with the optimized agents     (csc synthesize --program)
#   3. export     SFT data from them twice: gold targets (the dialogues' own turns) and teacher
#                 targets (the optimized agents answering every train turn)
#                                                 (csc finetune export [--teacher ... --targets teacher])
#   4. fine-tune  one LoRA student on each export                (csc finetune run)
#   5. compare    zero-shot, optimized, fine-tuned-on-gold and fine-tuned-on-teacher supporters on
#                 the held-out test dialogues, with their cost   (csc compare)
#
# and a cost table of the whole loop (OUT/costs.md): tokens and wall time of optimization, of data
# making (synthesis, teacher targets), of training, and per-turn inference latency.
#
# The defaults are tiny so that it runs in minutes on a 2-core CPU with the embedded SmolLM2-135M
# (`LM=local`): 4 train / 2 dev turns to optimize, 2 synthesized dialogues of at most 6
# utterances, 4 LoRA steps of rank 4, reference context only, replies capped at 64 tokens. That
# checks the loop, it does not make a good supporter. A strong remote teacher and a small local
# student (see docs/finetuning.md, "The whole loop"):
#
#   LM=openai/gpt-4o-mini MAX_TRAIN=200 MAX_DEV=50 DIALOGUES=500 UTTERANCES=30 \
#   RECIPE=smollm2-135m-lora STEPS=300 CONTEXT=both MAX_TOKENS=256 CONCURRENCY=16 \
#     bash finetune/recipes/whole_loop.sh
#
# The students are always the embedded model (the recipe's `model.name`); LM is the model of the
# optimized agents, the synthesis, the teacher and the zero-shot / optimized supporters.
set -euo pipefail

DATA=${DATA:-data/samples/sample_en.json}   # labelled dialogues (any csc format)
OUT=${OUT:-runs/loop}
SEED=${SEED:-0}
LM=${LM:-local}
MAX_TRAIN=${MAX_TRAIN:-4}                   # supporter turns to compile on ...
MAX_DEV=${MAX_DEV:-2}                       # ... and to score each agent on, before and after
OPTIMIZER=${OPTIMIZER:-bootstrap}
DIALOGUES=${DIALOGUES:-2}                   # dialogues to synthesize
UTTERANCES=${UTTERANCES:-6}                 # utterance limit per synthesized dialogue
RECIPE=${RECIPE:-smollm2-135m-lora-tiny}
STEPS=${STEPS:-4}
DEVICE=${DEVICE:-auto}
CONTEXT=${CONTEXT:-ref}
MAX_TOKENS=${MAX_TOKENS:-64}
CONCURRENCY=${CONCURRENCY:-2}
PYTHON=${PYTHON:-python3}                   # only reads JSON for the cost table (stdlib)

mkdir -p "$OUT"
: > "$OUT/timings.txt"
timed() {
  local label=$1 start=$SECONDS
  shift
  "$@"
  echo "[loop] $label: $((SECONDS - start)) s" | tee -a "$OUT/timings.txt"
}
loop_start=$SECONDS

# 1. Compile the supporter assistant (strategy accuracy) and the supporter (strategy adherence,
#    judged by the strategy labeler) on the seeded train part of DATA; its test part (the same
#    dialogues as `csc compare --split test --seed SEED`) is never touched.
timed optimize csc optimize --program rolecs --train "$DATA" --seed "$SEED" --lm "$LM" \
  --optimizer "$OPTIMIZER" --budget light --max-train "$MAX_TRAIN" --max-dev "$MAX_DEV" \
  --max-tokens "$MAX_TOKENS" --concurrency "$CONCURRENCY" --out "$OUT/rolecs.json"

# 2. New dialogues from the optimized agents (the judge is off: a 135M judge passes almost
#    nothing; keep it on with a capable LM).
timed synthesize csc synthesize --program "$OUT/rolecs.json" --lm "$LM" -n "$DIALOGUES" \
  --max-utterances "$UTTERANCES" --seed "$SEED" --concurrency "$CONCURRENCY" --no-filter \
  --show 0 --out "$OUT/synth"

# 3. SFT data from the synthesized dialogues, all of them in the train split (the students are
#    scored on DATA's test dialogues): gold targets, then the optimized agents as the teacher.
timed export-gold csc finetune export --data "$OUT/synth/dialogues.jsonl" --out "$OUT/sft-gold" \
  --val-fraction 0 --test-fraction 0 --seed "$SEED" --overwrite
timed export-teacher csc finetune export --data "$OUT/synth/dialogues.jsonl" \
  --out "$OUT/sft-teacher" --splits "$OUT/sft-gold/splits.json" \
  --teacher "optimized:$OUT/rolecs.json" --teacher-lm "$LM" --targets teacher \
  --max-tokens "$MAX_TOKENS" --concurrency "$CONCURRENCY" --overwrite

# 4. One LoRA student per export.
for targets in gold teacher; do
  rm -rf "$OUT/ft-$targets"
  timed "finetune-$targets" csc finetune run --data "$OUT/sft-$targets" --recipe "$RECIPE" \
    --out "$OUT/ft-$targets" --max-steps "$STEPS" --device "$DEVICE"
done

# 5. The four supporters on DATA's held-out test dialogues.
timed compare csc compare --data "$DATA" --split test --seed "$SEED" --lm "$LM" \
  --context "$CONTEXT" --max-tokens "$MAX_TOKENS" --concurrency "$CONCURRENCY" \
  --supporter zero-shot=zero-shot \
  --supporter optimized="optimized:$OUT/rolecs.json" \
  --supporter ft-gold="finetuned:$OUT/ft-gold" \
  --supporter ft-teacher="finetuned:$OUT/ft-teacher" \
  --out "$OUT/compare"

echo "[loop] total: $((SECONDS - loop_start)) s" | tee -a "$OUT/timings.txt"

# The cost of each knowledge source, from the files the stages wrote.
"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/costs.md"
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def read(name):
    path = out / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def cell(value):
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def row(*cells):
    return "| " + " | ".join(cell(c) for c in cells) + " |"


print("| stage | LM calls | prompt tokens | completion tokens | wall s | note |")
print("|---|---|---|---|---|---|")
opt = read("rolecs.meta.json")
usage = opt.get("lm_usage") or {}
agents = opt.get("agents") or {}
note = "; ".join(
    f"{name} dev {a.get('metric')} {a.get('dev_before', 0):.1f} -> {a.get('dev_after', 0):.1f}"
    for name, a in agents.items()
)
print(row("optimize (rolecs)", usage.get("calls"), usage.get("prompt_tokens"),
          usage.get("completion_tokens"), opt.get("seconds"), note))
syn = (read("synth/summary.json").get("totals") or {})
usage = syn.get("lm_usage") or {}
print(row("synthesize", usage.get("calls"), usage.get("prompt_tokens"),
          usage.get("completion_tokens"), syn.get("wall_seconds"), f"{syn.get('kept')} dialogues"))
for targets in ("gold", "teacher"):
    export = read(f"sft-{targets}/export.json")
    cost = export.get("cost") or {}
    rows = (export.get("counts") or {}).get("train")
    print(row(f"export ({targets} targets)", cost.get("lm_calls_this_run"),
              cost.get("prompt_tokens"), cost.get("completion_tokens"), cost.get("wall_time_s"),
              f"{rows.get('rows')} train rows" if rows else ""))
for targets in ("gold", "teacher"):
    ft = read(f"ft-{targets}/csc_finetune.json")
    print(row(f"fine-tune ({targets})", None, None, None, ft.get("wall_time_s"),
              f"{ft.get('steps')} steps, final loss {cell(ft.get('final_loss'))}"))
print()
print("| supporter | context | turns | ACC | prompt tok/turn | completion tok/turn | latency s/turn |")
print("|---|---|---|---|---|---|---|")
for r in read("compare/compare.json").get("rows", []):
    print(row(r["supporter"], r["context"], r["turns"], r["metrics"].get("ACC"),
              r.get("prompt_tokens"), r.get("completion_tokens"), r.get("latency_s")))
PY
cat "$OUT/timings.txt"
