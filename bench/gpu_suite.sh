#!/usr/bin/env bash
# zoo's GPU checks in one go, each section optional (SECTIONS, default all):
#   train_step  the train-step benchmark against transformers (eager and compiled, same process)
#   tests       the `gpu` tests
#   fit         a real `zoo fit` of Pythia-160M on the GPU and its Lightning throughput
#   recursive   MeSH vs recursive base vs vanilla of the same compute depth at 160M (bench/recursive.py)
#   experiment  the matched-compute experiment at 160M scale, shortened to EXPERIMENT_STEPS per run
#   rollout     the rollout benchmark: native engine (CUDA graphs, and eager) against transformers'
#               static-cache compiled generate, batch 64, 128 prompt + 512 new tokens, for each of ROLLOUT_MODELS
#               (default: MODEL; e.g. "pythia-160m pythia-410m pythia-1b")
#   memory      training memory by arm (AdamW, AdamW8bit, paged, LoRA, QLoRA) with the allocator's peak, and the
#               frozen reference in 8 and 4 bits, for each of MEMORY_MODELS at 8 x 2048 in bf16 autocast
#               (bench/memory.py); a LoRA policy's sync and decode beside a full one's (bench/lora_sync.py); a GRPO
#               update's peak by batch and arm (bench/rl_memory.py); the credit pass at 8K (bench/credit.py memory)
#   queue       queue scheduling against synchronous batch rollout (bench/queue_scheduling.py): the long-tailed
#               countdown setting and Pythia-160M sampling (128 + up to 512 tokens, long-tailed lengths), bf16
#   async       asynchronous RL (bench/async_rl.py real on the GPU, thread workers on the trainer's GPU and, with
#               two GPUs, on cuda:1), and the agentic benchmark
#   synth       DESIGNER's diversity metrics at the paper's scale, 300,000 x 384 and x 2560, float32 and float64,
#               checked against brute force on 20,000 rows (bench/synth_metrics.py)
#   infusion    experiment=infusion_sweep_gpu shortened to INFUSION_STEPS steps at each size, with
#               INFUSION_FACTS domain facts: its throughput and the full GPU sweep's cost from it
# Results land in $OUT (default ./gpu_results). Run from the repository root with zoo installed.
#
#   bash bench/gpu_suite.sh
#   SECTIONS="recursive experiment" EXPERIMENT_STEPS=150 bash bench/gpu_suite.sh
set -uo pipefail
OUT=$(realpath -m "${OUT:-gpu_results}")
SECTIONS=${SECTIONS:-train_step tests fit recursive experiment rollout memory queue async synth infusion}
MODEL=${MODEL:-pythia-160m}
BATCH=${BATCH:-16}
SEQ=${SEQ:-2048}
STEPS=${STEPS:-15}
FIT_STEPS=${FIT_STEPS:-80}
FIT_ARGS=${FIT_ARGS:-experiment=pythia160m_gpu}
EXPERIMENT_STEPS=${EXPERIMENT_STEPS:-1200}
INFUSION_STEPS=${INFUSION_STEPS:-150}
INFUSION_FACTS=${INFUSION_FACTS:-24000}
INFUSION_MODELS=${INFUSION_MODELS:-pythia-14m pythia-70m pythia-160m pythia-410m}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
has() { [[ " $SECTIONS " == *" $1 "* ]]; }

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi") \
  | tee "$OUT/device.txt"
python3 -c "import torch, transformers, lightning; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/device.txt"

if has train_step; then
  echo "== train-step benchmark: $MODEL, $BATCH x $SEQ =="
  python3 bench/train_step.py --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --compile \
    --json "$OUT/train_step.jsonl" 2>&1 | tee "$OUT/train_step.log" || status=1
fi

if has rollout; then
  for model in ${ROLLOUT_MODELS:-$MODEL}; do
    echo "== rollout benchmark: $model, batch 64, 128 prompt + 512 new =="
    python3 bench/rollout.py --model "$model" --batch 64 --prompt 128 --new 512 --dtype bf16 \
      --engines "${ROLLOUT_ENGINES:-hf_static,native,native_eager}" --json "$OUT/rollout.jsonl" 2>&1 \
      | tee -a "$OUT/rollout.log" || status=1
  done
fi

if has memory; then
  for model in ${MEMORY_MODELS:-pythia-160m pythia-410m}; do
    echo "== training memory: $model, 8 x 2048, bf16 autocast =="
    python3 bench/memory.py --model "$model" --batch 8 --seq 2048 --bf16 --json "$OUT/memory.jsonl" 2>&1 \
      | tee -a "$OUT/memory.log" || status=1
  done
  python3 bench/lora_sync.py --batch 64 --new 256 --dtype bf16 2>&1 | tee "$OUT/lora_sync.log" || status=1
  echo "== a GRPO update's peak memory: unsplit, micro-batches, packed, checkpointing, bf16 autocast =="
  python3 bench/rl_memory.py --shape smollm2-135m --rows 16 32 64 --prompt 128 --response 1024 \
    --micro-batch-tokens 8192 --bf16 --json "$OUT/rl_memory.jsonl" 2>&1 | tee "$OUT/rl_memory.log" || status=1
  echo "== the attention-credit pass at 8K tokens under map budgets =="
  (cd bench && python3 credit.py --experiment memory --length 8192 --budgets 256 4096) 2>&1 \
    | tee "$OUT/credit_memory.log" || status=1
fi

if has async; then
  echo "== asynchronous RL: countdown GRPO on the GPU, and the agentic loop =="
  devices=$(python3 -c "import torch; print(torch.cuda.device_count())")
  (cd bench && python3 async_rl.py real --device cuda --prompts 16 --steps 30 --workers thread \
    && { [ "$devices" -lt 2 ] || python3 async_rl.py real --device cuda --prompts 16 --steps 30 --workers thread \
      --worker-device cuda:1; } \
    && python3 async_rl.py agentic) 2>&1 | tee "$OUT/async.log" || status=1
fi

if has queue; then
  echo "== queue scheduling: countdown, and $MODEL sampling =="
  (cd bench && python3 queue_scheduling.py --setting countdown --p0 64 --r 4 --rows 32 --steps 6 \
    && python3 queue_scheduling.py --setting sampling --model "$MODEL" --dtype bf16 --prompts 1024 --p0 64 \
      --r 8 --rows 64 --steps 4 --median 64) 2>&1 | tee "$OUT/queue.log" || status=1
fi

if has tests; then
  echo "== gpu tests =="
  python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" || status=1
fi

if has fit; then
  echo "== zoo fit on the GPU: $FIT_ARGS, $FIT_STEPS steps =="
  python3 -m zoo fit $FIT_ARGS trainer.max_steps="$FIT_STEPS" trainer.val_check_interval="$FIT_STEPS" \
    trainer.log_every_n_steps=5 trainer.enable_progress_bar=false name=gpu_fit 2>&1 | tee "$OUT/fit.log" || status=1
  python3 - "$OUT" <<'EOF' || status=1
import glob, json, statistics, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

events = EventAccumulator(sorted(glob.glob("runs/gpu_fit/*/tb"))[-1])
events.Reload()
rates = [e.value for e in events.Scalars("train/tokens_per_s")]
summary = {
    "lightning_tokens_per_s_median": statistics.median(rates[len(rates) // 2 :]),  # after compilation
    "train_loss_first_last": [events.Scalars("train/loss")[0].value, events.Scalars("train/loss")[-1].value],
    "val_loss": [e.value for e in events.Scalars("val/loss")],
}
print(json.dumps(summary, indent=2))
json.dump(summary, open(f"{sys.argv[1]}/fit_summary.json", "w"), indent=2)
EOF
fi

if has recursive; then
  echo "== recursive family at 160m, $BATCH x $SEQ =="
  (cd bench && python3 recursive.py --size 160m --batch "$BATCH" --seq "$SEQ" --steps 10 --rounds 2 --compile \
    --json "$OUT/recursive.jsonl") 2>&1 | tee "$OUT/recursive.log" || status=1
fi

if has experiment; then
  echo "== matched-compute experiment at 160m, $EXPERIMENT_STEPS steps per run =="
  python3 -m zoo fit experiment=mesh_matched_compute_gpu trainer.max_steps="$EXPERIMENT_STEPS" \
    trainer.val_check_interval="$((EXPERIMENT_STEPS / 2))" trainer.enable_progress_bar=false \
    probes.every_n_steps="$((EXPERIMENT_STEPS / 2))" 2>&1 | tee "$OUT/experiment.log" || status=1
  cp runs/mesh_matched_compute_gpu/*/results.md runs/mesh_matched_compute_gpu/*/results.png "$OUT/" 2>/dev/null
fi
if has synth; then
  echo "== DESIGNER diversity metrics: 300,000 x 384 and x 2560 =="
  for dim in 384 2560; do
    python3 bench/synth_metrics.py --n 300000 --dim "$dim" --json "$OUT/synth_metrics.jsonl" 2>&1 \
      | tee -a "$OUT/synth_metrics.log" || status=1
  done
fi

if has infusion; then
  echo "== knowledge infusion at GPU scale: $INFUSION_STEPS steps per size, $INFUSION_FACTS domain facts =="
  for size in $INFUSION_MODELS; do
    start=$(date +%s)
    python3 -m zoo fit experiment=infusion_sweep_gpu hydra.mode=RUN model="$size" \
      data.domain_facts="$INFUSION_FACTS" trainer.max_steps="$INFUSION_STEPS" \
      trainer.val_check_interval="$INFUSION_STEPS" checkpoint.every_n_train_steps="$INFUSION_STEPS" \
      trainer.log_every_n_steps=10 trainer.enable_progress_bar=false name="gpu_infusion_$size" 2>&1 \
      | tail -n 5 | tee -a "$OUT/infusion.log" || status=1
    echo "$size $(($(date +%s) - start))" >> "$OUT/infusion_wall.txt"
  done
  python3 - "$OUT" <<'EOF' || status=1
import glob, json, statistics, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

full_tokens, runs_per_size, summary = 60_000_000, 7, {}
walls = dict(line.split() for line in open(f"{sys.argv[1]}/infusion_wall.txt"))
for size, wall in walls.items():
    events = EventAccumulator(sorted(glob.glob(f"runs/gpu_infusion_{size}/*/tb"))[-1])
    events.Reload()
    rates = [e.value for e in events.Scalars("train/tokens_per_s")]
    rate = statistics.median(rates[len(rates) // 2 :])  # after compilation
    summary[size] = {
        "wall_s_short_run": int(wall),
        "tokens_per_s": rate,
        "full_run_min": full_tokens / rate / 60,
        "recall_general": events.Scalars("recall/general")[-1].value,
        "recall_domain": events.Scalars("recall/domain")[-1].value,
    }
summary["full_sweep_h"] = sum(runs_per_size * s["full_run_min"] for s in summary.values()) / 60
print(json.dumps(summary, indent=2))
json.dump(summary, open(f"{sys.argv[1]}/infusion_summary.json", "w"), indent=2)
EOF
fi
exit $status
