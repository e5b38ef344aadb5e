"""Queue scheduling (zoo/rollout/samplers/queue.py, ROLL Flash) against synchronous batch rollout: rollout-phase time
for the same samples trained, in one process.

Every arm trains ``--steps`` steps of P0 prompts x R responses on an engine with ``--rows`` sequence rows (the
memory budget of the rollout engine), and scores every response with a cheap reward:

- ``batch``: synchronous batch rollout, as an engine without continuous batching runs it: the step's prompts in
  consecutive static batches of rows/R prompts, each batch lasting until its longest response ends;
- ``queue``: queue scheduling: every response a request of the continuous-batching engine, a finished row
  refilled at once, each group scored as it completes (``rollout.schedule=queue``, ``rollout.max_running=rows``);
- ``queue+25%``: the same with 25% redundant prompts (``rollout.extra_prompts``): the step stops once P0 groups
  are complete; the prompts it did not train come back, protected, the next step (so every arm trains P0 x R
  samples a step and no prompt is lost);
- ``queue+25%, tail queue``: redundant prompts whose leftovers go to the tail-batching queue instead, to run
  together in a long round once P0 of them wait (``sampler=tail_batching sampler.prompt_ratio=1.25
  sampler.response_ratio=1 rollout.schedule=queue``).

Settings (``--setting``):

- ``countdown``: the long-tailed setting of ``bench/tail_batching.py real``: a tiny model trained here to count
  down from the number in its prompt, so each prompt fixes its response length (most a few tokens, one in ten
  120-250);
- ``sampling``: plain sampling from a GPT-NeoX (``--model``: ``tiny`` on a CPU, ``pythia-160m`` on a GPU, random
  weights, 128-token prompts, no stop token) with each prompt's response length drawn once from a long tail
  (lognormal, median ~``--median`` tokens, capped at ``--new``): the rollout benchmark's 128 + 512 setting.

After the steps, every arm runs the prompts it deferred (returned or queued) to the end, so that each trains
every prompt it drew; the ratios compare samples/s over all of it. Prints rollout seconds, samples, samples/s,
slot occupancy (mean running rows / rows), engine steps and prefills, the ratios to ``batch``, and the length
of the responses the steps trained (aborting favours short answers; protection and draining undo it later).

    python bench/queue_scheduling.py --setting countdown
    python bench/queue_scheduling.py --setting sampling
    python bench/queue_scheduling.py --setting sampling --model pythia-160m --dtype bf16 --device cuda
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
from tail_batching import LONGEST, START, countdown_model
from timing import gpt_neox_pair

from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.rl.rewards import RewardRunner
from zoo.rollout.samplers.queue import QueuePlanner, run_queue_round
from zoo.rollout.samplers.tail_batching import TailBatcher
from zoo.text.loader import PromptStream


class _Lengths:
    def decode(self, ids, skip_special_tokens=True):
        return " " * len(ids)


def _parity(prompt: str, completion: str, reference: str) -> float:
    return float(len(completion) % 2)


def run_arm(name, engine, problems, args, runner, device) -> dict[str, float]:
    """Rollout-phase seconds, samples trained and engine figures of one arm: ``args.steps`` steps, then the
    prompts it deferred (returned or queued) run to the end, so that every prompt it drew is trained."""
    p0, r = args.p0, args.r
    extra = math.ceil(0.25 * p0) if name.startswith("queue+25%") else 0
    planner, stream = QueuePlanner(p0, extra), PromptStream(len(problems), args.seed)
    tail = TailBatcher(p0, r, 1 + extra / p0, 1.0) if name.endswith("tail queue") else None
    totals = {"seconds": 0.0, "samples": 0, "occupancy": 0.0, "prefills": 0, "decode_steps": 0, "step_lengths": []}
    step, draining = 0, False

    def rollout(launch: list[int], protected: list[bool], needed: int) -> list:
        nonlocal step
        params = SamplingParams(args.budget, args.temperature, stop_token_ids=args.stops, seed=step)
        step += 1
        per_batch = max(args.rows // r, 1) if name == "batch" else len(launch)  # batch: static batches
        begin = time.perf_counter()
        outcomes = [
            run_queue_round(
                engine,
                problems,
                launch[i : i + per_batch],
                protected[i : i + per_batch],
                r,
                r,
                min(needed, len(launch[i : i + per_batch])),
                params,
                runner.submit_answers,
                _Lengths(),
                max_running=None if name == "batch" else args.rows,
            )  # fmt: skip
            for i in range(0, len(launch), per_batch)
        ]
        if device == "cuda":
            torch.cuda.synchronize()
        totals["seconds"] += time.perf_counter() - begin
        for outcome in outcomes:
            if not draining:
                totals["step_lengths"] += outcome.stats.trained_lengths
            totals["samples"] += len(outcome.samples)
            totals["occupancy"] += outcome.stats.occupancy * outcome.stats.decode_steps
            totals["decode_steps"] += outcome.stats.decode_steps
            totals["prefills"] += outcome.stats.prefills
        return outcomes

    for _ in range(args.steps):
        if tail is not None:  # leftovers wait in the tail-batching queue for a long round of their own
            plan = tail.plan(stream.take)
            (outcome,) = rollout(plan.prompts, [plan.long] * len(plan.prompts), p0)
            tail.finish(plan, outcome.trained)
        else:
            launch, protected = planner.plan(stream.take)
            for outcome in rollout(launch, protected, p0):
                planner.finish(outcome)
    deferred = tail.queue if tail is not None else planner.returned
    draining = True
    for i in range(0, len(deferred), p0):  # drain: every drawn prompt trained
        chunk = deferred[i : i + p0]
        rollout(chunk, [True] * len(chunk), len(chunk))
    totals["deferred"] = len(deferred)
    totals["occupancy"] /= max(totals["decode_steps"], 1)
    if name == "batch":  # a static batch of rows / R prompts uses at most that many rows
        totals["occupancy"] *= min(args.rows // r * r, args.rows) / args.rows
    return totals


def countdown_problems(args, device):
    model = countdown_model(args.seed, args.train_steps, device)
    rng = random.Random(args.seed)
    lengths = [  # most prompts ask for a few tokens; one in ten for 120-250, 20-40x the median
        rng.randint(120, LONGEST) if rng.random() < 0.1 else max(2, round(6 * math.exp(0.5 * rng.gauss(0, 1))))
        for _ in range(args.prompts)
    ]
    problems = [{"prompt_ids": [START, k], "prompt": str(i), "reference": ""} for i, k in enumerate(lengths)]
    args.budget, args.stops = LONGEST + 4, (0,)
    return model, problems, lengths


def sampling_problems(args, device, dtype):
    config, _, model = gpt_neox_pair(args.model, device, dtype)
    model.eval()
    rng = random.Random(args.seed)
    problems, lengths = [], []
    for i in range(args.prompts):  # a persistent per-prompt length, long-tailed: median ~args.median
        length = min(args.new, max(4, round(args.median * math.exp(1.1 * rng.gauss(0, 1)))))
        prompt = [rng.randrange(2, config.vocab_size) for _ in range(args.prompt)]
        problems.append({"prompt_ids": prompt, "prompt": str(i), "reference": "", "max_new_tokens": length})
        lengths.append(length)
    args.budget, args.stops = args.new, ()
    return model, problems, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=["countdown", "sampling"], default="countdown")
    parser.add_argument("--model", default="tiny", help="sampling: tiny or a Pythia preset (pythia-160m)")
    parser.add_argument("--prompt", type=int, default=128, help="sampling: prompt tokens")
    parser.add_argument("--new", type=int, default=512, help="sampling: the longest response")
    parser.add_argument("--median", type=int, default=32, help="sampling: median response length")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--p0", type=int, default=64, help="prompts trained per step")
    parser.add_argument("--r", type=int, default=4, help="responses per prompt")
    parser.add_argument("--rows", type=int, default=32, help="the engine's sequence rows (max_running)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--train-steps", type=int, default=400, help="countdown: steps teaching the model")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device, dtype = args.device, {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(args.seed)
    if args.setting == "countdown":
        model, problems, lengths = countdown_problems(args, device)
    else:
        model, problems, lengths = sampling_problems(args, device, dtype)
    engine = NativeEngine(model)
    runner = RewardRunner(_parity)
    ordered = sorted(lengths)
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"{args.setting}: {args.prompts} prompts, response length median {ordered[len(ordered) // 2]}, P75 "
        f"{ordered[3 * len(ordered) // 4]}, max {ordered[-1]}; P0={args.p0}, R={args.r}, {args.rows} rows, "
        f"{args.steps} steps, {args.dtype}, {where}"
    )
    warm = argparse.Namespace(**{**vars(args), "steps": 2})
    run_arm("queue", engine, problems, warm, runner, device)  # warm-up: allocator, kernels, graph capture
    results = {}
    for name in ("batch", "queue", "queue+25%", "queue+25%, tail queue"):
        results[name] = run_arm(name, engine, problems, args, runner, device)
    base = results["batch"]["samples"] / results["batch"]["seconds"]
    for name, r in results.items():
        rate = r["samples"] / r["seconds"]
        print(
            f"{name:22s} rollout {r['seconds']:7.2f} s for {r['samples']:5d} samples ({r['deferred']:3d} prompts "
            f"drained at the end)  {rate:8.1f} samples/s  occupancy {r['occupancy']:.2f}  "
            f"{r['decode_steps']:6d} steps, {r['prefills']:5d} prefills  {rate / base:5.2f}x batch"
        )
    for name, r in results.items():  # what aborting does to the lengths a step trains (before the drain)
        lengths = sorted(r["step_lengths"])
        print(
            f"{name:22s} trained response length in the steps: mean {sum(lengths) / len(lengths):6.1f}, "
            f"P90 {lengths[9 * len(lengths) // 10]}, max {lengths[-1]}"
        )
    runner.close()


if __name__ == "__main__":
    main()
