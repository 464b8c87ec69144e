#!/usr/bin/env bash
# End to end on one machine: export SFT data, fine-tune SmolLM2-135M with LoRA, optimize the
# prompt, and compare zero-shot, prompt-optimized and fine-tuned supporters on the held-out
# dialogues. Every stage uses the same seeded dialogue split (80/10/10, seed $SEED), so the test
# dialogues are never trained or optimized on.
#
#   bash finetune/recipes/end_to_end.sh          # sample data, 2-core CPU, see docs/finetuning.md
#   DATA=rolecs.jsonl STEPS=200 RECIPE=smollm2-135m-lora CONTEXT=both \
#     bash finetune/recipes/end_to_end.sh        # a real run, on a GPU
set -euo pipefail

DATA=${DATA:-data/samples/sample_en.json}
OUT=${OUT:-runs/e2e}
SEED=${SEED:-0}
RECIPE=${RECIPE:-smollm2-135m-lora-quick}
STEPS=${STEPS:-10}
DEVICE=${DEVICE:-auto}
CONTEXT=${CONTEXT:-ref}
MAX_TOKENS=${MAX_TOKENS:-96}
LM=${LM:-local}
mkdir -p "$OUT"
: > "$OUT/timings.txt"
timed() { local label=$1 start=$SECONDS; shift; "$@"; echo "[e2e] $label: $((SECONDS - start)) s" | tee -a "$OUT/timings.txt"; }

# 1. SFT data: joint strategy + response rows, split by dialogue.
timed export csc finetune export --data "$DATA" --out "$OUT/sft" --task joint --seed "$SEED" \
  --val-fraction 0.1 --test-fraction 0.1 --test-out "$OUT/test.jsonl" --overwrite

# 2. LoRA fine-tuning of the embedded SmolLM2-135M-Instruct.
rm -rf "$OUT/ft"
timed finetune csc finetune run --data "$OUT/sft" --recipe "$RECIPE" --out "$OUT/ft" \
  --max-steps "$STEPS" --device "$DEVICE"

# 3. Prompt optimization of the strategy predictor (few-shot bootstrapping) on the same train split.
timed optimize csc optimize --program strategy --train "$DATA" --splits "$OUT/sft/splits.json" \
  --optimizer bootstrap --budget light \
  --lm "$LM" --seed "$SEED" --max-train 24 --max-dev 8 --out "$OUT/optimized.json"

# 4. Compare the three supporters on the held-out test dialogues.
timed compare csc compare --data "$DATA" --splits "$OUT/sft/splits.json" --lm "$LM" --context "$CONTEXT" \
  --max-tokens "$MAX_TOKENS" \
  --supporter zero-shot=zero-shot \
  --supporter optimized="optimized:$OUT/optimized.json" \
  --supporter finetuned="finetuned:$OUT/ft" \
  --out "$OUT/compare"

cat "$OUT/timings.txt"
