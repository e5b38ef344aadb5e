#!/usr/bin/env bash
# LoRA and QLoRA against full-parameter GRPO on the RL demonstration (two-digit carries, exact-match reward), each
# seed's run from that seed's SFT policy (hub:arithmetic-sft-SEED, pushed after `zoo fit experiment=arithmetic_sft
# seed=SEED`; seed 1337's is the shipped hub:arithmetic-sft). Prints per arm: held-out greedy pass@1 after 200 steps
# per seed, the trainable parameters and the wall time of the last seed's run. Run from a directory whose hub holds
# those entries:
#
#   SEEDS="1337 1 2 3" bash /path/to/zoo/bench/lora_arithmetic.sh
set -uo pipefail
SEEDS=${SEEDS:-"1337 1 2 3"}
ARMS=(
  "full|experiment=arithmetic_grpo"
  "lora r16|experiment=arithmetic_grpo_lora"
  "qlora r16 nf4|experiment=arithmetic_grpo_lora model.lora.quantize=4bit"
)
for entry in "${ARMS[@]}"; do
  arm=${entry%%|*}
  line="$arm:"
  for seed in $SEEDS; do
    name="lora_$(echo "$arm" | tr -c 'a-zA-Z0-9' '_')_$seed"
    start=$(date +%s.%N)
    python -m zoo fit ${entry#*|} seed="$seed" model.init_from="hub:arithmetic-sft-$seed" name="$name" \
      trainer.enable_progress_bar=false > "$name.log" 2>&1 || { line+=" failed"; continue; }
    seconds=$(echo "$(date +%s.%N) - $start" | bc)
    line+=$(python - "$name" "$seconds" <<'PY'
import glob, json, sys
m = json.load(open(sorted(glob.glob(f"runs/{sys.argv[1]}/*/metrics.json"))[-1]))
print(f"  {m['val/pass@1']:.3f} ({m['model/trainable_parameters']:.0f} trained, {float(sys.argv[2]):.0f} s)")
PY
)
  done
  echo "$line"
done
