#!/usr/bin/env bash
# zoo's GPU checks in one go: the `gpu` tests, the train-step benchmark against transformers (eager and
# compiled, same process), and a real `zoo fit` of Pythia-160M on the GPU with its Lightning throughput.
# Results land in $OUT (default ./gpu_results). Run from the repository root with zoo installed.
#
#   bash bench/gpu_suite.sh                       # Pythia-160M, 16 x 2048, bf16
#   MODEL=tiny BATCH=4 SEQ=128 FIT_STEPS=20 FIT_ARGS="model=pythia trainer=default" bash bench/gpu_suite.sh
set -uo pipefail
OUT=${OUT:-gpu_results}
MODEL=${MODEL:-pythia-160m}
BATCH=${BATCH:-16}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-15}
FIT_STEPS=${FIT_STEPS:-80}
FIT_ARGS=${FIT_ARGS:-experiment=pythia160m_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi") \
  | tee "$OUT/device.txt"
python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/device.txt"

echo "== train-step benchmark: $MODEL, $BATCH x $SEQ =="
python3 bench/train_step.py --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --compile \
  --json "$OUT/train_step.jsonl" 2>&1 | tee "$OUT/train_step.log" || status=1

echo "== gpu tests =="
python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" || status=1

echo "== zoo fit on the GPU: $FIT_ARGS, $FIT_STEPS steps =="
python3 -m zoo fit $FIT_ARGS trainer.max_steps="$FIT_STEPS" trainer.val_check_interval="$FIT_STEPS" \
  trainer.log_every_n_steps=5 trainer.enable_progress_bar=false name=gpu_fit 2>&1 | tee "$OUT/fit.log" || status=1
python3 - "$OUT" <<'EOF' || status=1
import glob, json, statistics, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sorted(glob.glob("runs/gpu_fit/*/tb"))[-1]
events = EventAccumulator(run)
events.Reload()
rates = [e.value for e in events.Scalars("train/tokens_per_s")]
steady = rates[len(rates) // 2 :]  # the second half: compilation and warm-up are over
summary = {
    "lightning_tokens_per_s_median": statistics.median(steady),
    "train_loss_first_last": [events.Scalars("train/loss")[0].value, events.Scalars("train/loss")[-1].value],
    "val_loss": [e.value for e in events.Scalars("val/loss")],
}
print(json.dumps(summary, indent=2))
json.dump(summary, open(f"{sys.argv[1]}/fit_summary.json", "w"), indent=2)
EOF
exit $status
