#!/usr/bin/env bash
# AsyPPO's ablations (notes §2.5) on the RL demonstration's task: two-digit carries, exact-match reward on the answer
# after a worked solution, from each seed's SFT policy (hub:arithmetic-sft-SEED, pushed after
# `zoo fit experiment=arithmetic_sft seed=SEED`). Prints per arm and seed: held-out greedy pass@1 after 200 steps,
# and the final σ and policy entropy. Run from a directory whose hub holds those entries. The UTD-4 arms take 8
# optimizer steps per rollout, so 1,600 steps are their 200 rollouts. ONLY=TEXT runs the arms whose name holds it.
#
#   SEEDS="1337 1 2" bash /path/to/zoo/bench/asyppo_arithmetic.sh
set -uo pipefail
SEEDS=${SEEDS:-"1337 1 2"}
declare -A ARMS=(
  ["asyppo"]="experiment=arithmetic_asyppo"
  ["asyppo, critics on all data"]="experiment=arithmetic_asyppo module.asyppo.shard_mode=shared"
  ["asyppo UTD4, sigma mask"]="experiment=arithmetic_asyppo module.asyppo.entropy_filter=0 module.algorithm.ppo_epochs=4 module.algorithm.minibatch_size=64 trainer.max_steps=1600 trainer.val_check_interval=50"
  ["asyppo UTD4, random mask"]="experiment=arithmetic_asyppo module.asyppo.entropy_filter=0 module.asyppo.mask_kind=random module.algorithm.ppo_epochs=4 module.algorithm.minibatch_size=64 trainer.max_steps=1600 trainer.val_check_interval=50"
  ["asyppo UTD4, no mask"]="experiment=arithmetic_asyppo module.asyppo.entropy_filter=0 module.asyppo.advantage_mask=0 module.algorithm.ppo_epochs=4 module.algorithm.minibatch_size=64 trainer.max_steps=1600 trainer.val_check_interval=50"
  ["asyppo, sigma-filtered bonus"]="experiment=arithmetic_asyppo module.asyppo.advantage_mask=0 module.algorithm.entropy_coef=0.01"
  ["asyppo, plain bonus"]="experiment=arithmetic_asyppo module.asyppo.advantage_mask=0 module.asyppo.entropy_filter=0 module.algorithm.entropy_coef=0.01"
  ["ppo, 1 critic (2 critics' size)"]="experiment=arithmetic_asyppo module.asyppo.critics=1 module.asyppo.critic_model.hidden_size=32 module.asyppo.advantage_mask=0 module.asyppo.entropy_filter=0"
  ["grpo"]="experiment=arithmetic_grpo"
)
for arm in "${!ARMS[@]}"; do
  [[ -n "${ONLY:-}" && "$arm" != *"$ONLY"* ]] && continue
  line="$arm:"
  for seed in $SEEDS; do
    name="ablation_$(echo "$arm" | tr -c 'a-zA-Z0-9' '_')_$seed"
    python -m zoo fit ${ARMS[$arm]} seed="$seed" model.init_from="hub:arithmetic-sft-$seed" name="$name" \
      trainer.enable_progress_bar=false > "$name.log" 2>&1 || { line+=" failed"; continue; }
    line+=$(python - "$name" <<'PY'
import glob, json, sys
m = json.load(open(sorted(glob.glob(f"runs/{sys.argv[1]}/*/metrics.json"))[-1]))
print(f"  {m['val/pass@1']:.3f} (σ {m.get('asyppo/sigma_mean', float('nan')):.4f}, H {m.get('policy/entropy', float('nan')):.2f})")
PY
)
  done
  echo "$line"
done
