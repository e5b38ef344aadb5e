"""Asynchronous RL (ROLL Flash, arXiv:2510.11345): how much rollout–train decoupling gains, against the paper's
bounds.

``simulate``: the discrete-event simulator of ``zoo/rollout/workers/simulator.py`` (zoo's own sample buffer inside):
``K`` devices, ``N`` samples a step with long-tailed generation times (lognormal, median 1, ``--sigma``, capped at
``--max``), training ``--train`` seconds per sample on one device. Synchronous: all ``K`` devices generate, then
all train (``E·N·μ_train/K``). Asynchronous at ratio α: ``round(β*·K)`` devices train (β* of Proposition 2) while the
others generate. Prints, per ``K`` and α, the time per step, the speedup over synchronous, the mean completion
time per sample beside Proposition 1's bound (``Q = (α+1)·N``), the step time beside Proposition 2's bound, the
mean staleness and the share of generation time wasted on expired samples.

``real``: GRPO through zoo's own trainer (``RolloutCallback``, ``GRPOModule``) on the long-tailed countdown setting
of ``bench/tail_batching.py real``: a tiny GPT-NeoX taught here to answer ``[START, k]`` with ``k-1, ..., 1, EOS``,
prompts whose ``k`` is mostly a few tokens and one in ten 120-250 (rewarded for a correct countdown). Every arm
trains the same number of samples (``--steps`` steps of ``--prompts`` x ``--n``, the first two not timed: engine
servers start then) from the same policy: the
synchronous loop (``async_ratio`` null: generate, then train), and asynchronous rollout at α = 0 (the same loop
through the worker), 1, 2 and 4 (generation in its own process, ``--workers``, on its own policy copy while the
trainer trains), each with ROLL's rule (an older version's share of a batch waits for its stragglers) and without
waiting (stragglers past the window expire and are begun again). Prints
trained samples per second, the ratio to synchronous, the mean staleness, the trainer's wait for batches, the
weight-push time per step, the mean length of the responses trained (expiry favours short ones) and the prompts
expired.

    python bench/async_rl.py simulate
    python bench/async_rl.py simulate --workers 8 16 32 64 --samples 256 --sigma 1.5
``agentic``: multi-turn rollout with simulated environments whose steps take ``normal(μ, σ)`` seconds, μ = σ = 10 ms
(the paper's 10 s, scaled), on a tiny random GPT-NeoX: the synchronous multi-turn loop (every turn waits for the
slowest environment) against environment-level asynchrony (``zoo/envs/agent_rollout.py``), and with redundant
environments (more groups and more trajectories a group launched than kept). Prints the rollout time of each
(mean of ``--repeats``), the ratio to synchronous, and the summed environment time.

``parity``: the arithmetic GRPO demo of docs/rl.md (``experiment=arithmetic_sft`` then ``experiment=arithmetic_grpo``,
200 steps) per seed, synchronous and at α = 1 and 2: held-out greedy pass@1 after the last step, per seed and as
mean ± std (``--parallel`` runs side by side, one thread each, in ``--workdir``; ZOO_HUB should point there too).

    python bench/async_rl.py real
    python bench/async_rl.py real --device cuda --prompts 32 --steps 20
    python bench/async_rl.py agentic
    ZOO_HUB=exp/hub python bench/async_rl.py parity --seeds 1337 1 2 --workdir exp
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time

import lightning as L
import torch
from tail_batching import LONGEST, START, countdown_model
from zoo_runs import latest_run, threads_per_run, zoo

from zoo.datamodules.prompts import PromptDataModule
from zoo.generation.sampling import SamplingParams
from zoo.modules.grpo import GRPOModule
from zoo.rollout.callback import RolloutCallback
from zoo.rollout.workers.simulator import LongTail, proposition_1, proposition_2, simulate


def run_simulation(args: argparse.Namespace) -> None:
    lengths = LongTail(1.0, args.sigma, args.max)
    N, steps = args.samples, args.steps
    print(f"N = {N} samples/step, {steps} steps, lengths lognormal(median 1, sigma {args.sigma}) <= {args.max}, "
          f"training {args.train} s/sample on one device")  # fmt: skip
    header = "K  alpha  trainers  s/step  speedup  s/sample  Prop.1  s/step bound(Prop.2)  staleness  wasted"
    print(header)
    for K in args.workers:
        sync = simulate(K, N, steps, 0, args.train / K, lengths, seed=args.seed)
        mean, longest = statistics.mean(sync.generation_times), max(sync.generation_times)
        sync_bound, span = proposition_1(mean, longest, K, N), statistics.mean(sync.step_generation_times)
        print(f"{K:<3}{0:>5}  {'-':>8}  {sync.time_per_step:6.2f}  {1:7.2f}  "
              f"{span / N:8.3f}  {sync_bound:6.3f}  {'-':>21}  {0:9.2f}  {0:6.1%}")  # fmt: skip
        for alpha in args.alphas:
            bound = proposition_2(mean, longest, args.train, K, N, alpha)
            trainers = min(max(1, round(bound.train_share * K)), K - 1)
            run = simulate(K - trainers, N, steps, alpha, args.train / trainers, lengths, seed=args.seed)
            staleness = sum(s * c for s, c in run.staleness.items()) / sum(run.staleness.values())
            generated = sum(run.generation_times) + run.wasted_time
            per_sample = proposition_1(mean, longest, K - trainers, (alpha + 1) * N)
            print(f"{K:<3}{alpha:>5}  {trainers:>8}  {run.time_per_step:6.2f}  "
                  f"{sync.time_per_step / run.time_per_step:7.2f}  {run.time_per_sample:8.3f}  {per_sample:6.3f}  "
                  f"{bound.time_per_step:21.2f}  {staleness:9.2f}  {run.wasted_time / generated:6.1%}")  # fmt: skip
        print(f"   max speedup (Prop. 2, alpha -> inf): {bound.max_speedup:.2f}")


WARMUP = 2  # steps not timed


class _Numbers:
    """The countdown vocabulary: token k is the number k, 0 ends a completion."""

    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if i)


class CountdownData(PromptDataModule):
    """``prompts`` countdown prompts ``[START, k]``, ``k`` long-tailed; the reward is 1 for ``k-1, ..., 1``."""

    def __init__(self, prompts: int, batch_size: int, tail_share: float, seed: int) -> None:
        super().__init__(train_size=prompts, val_size=0, batch_size=batch_size, seed=seed)
        rng = random.Random(seed)
        self.lengths = [
            rng.randint(120, LONGEST)
            if rng.random() < tail_share
            else max(2, round(6 * math.exp(0.5 * rng.gauss(0, 1))))
            for _ in range(prompts)
        ]

    def prepare_data(self) -> None:
        self.tokenizer = _Numbers()
        self.reward = lambda prompt, completion, reference: float(completion == reference)

    def setup(self, stage=None) -> None:
        self.train_set = [
            {"prompt_ids": [START, k], "prompt": str(k), "reference": " ".join(map(str, range(k - 1, 0, -1)))}
            for k in self.lengths
        ]
        self.val_set = self.val_prompts = []


class _Clock(L.Callback):
    """The time from the end of the first ``WARMUP`` steps (the engine servers start, process ones spawn and import)
    to the end of training."""

    def on_train_batch_end(self, trainer, *args):
        if trainer.fit_loop.epoch_loop.batch_progress.total.completed == WARMUP:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.start


def run_real(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    policy = countdown_model(args.seed, args.train_steps, args.device)
    print(f"trained the countdown model in {time.perf_counter() - start:.0f} s")
    arms = [("synchronous", None, {})]
    for alpha in args.alphas:
        options = {"workers": args.workers, "worker_device": args.worker_device}
        arms.append((f"async alpha={alpha:g}", alpha, options))
        if alpha > 0:
            arms.append((f"async alpha={alpha:g} no wait", alpha, {**options, "wait_for_stragglers": False}))
    results = {}
    for name, alpha, options in arms:
        data = CountdownData(args.prompts * (args.steps + 4), args.prompts, args.tail_share, args.seed)
        module = GRPOModule(
            dict(arch="gpt_neox", **{k: getattr(policy.config, k) for k in ("vocab_size", "hidden_size",
                 "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings")}),
            optim=dict(lr=1e-5, warmup_steps=0),
            rollout=dict(n=args.n, max_new_tokens=LONGEST + 4, temperature=args.temperature, seed=args.seed),
        )  # fmt: skip
        module.configure_model()
        module.model.load_state_dict(policy.state_dict())
        clock = _Clock()
        trainer = L.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=1,
            max_steps=args.steps,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                RolloutCallback(engine="native", async_ratio=alpha, **options),
                clock,
                metrics := _Metrics(),
            ],
        )
        trainer.fit(module, datamodule=data)
        samples = (args.steps - WARMUP) * args.prompts * args.n
        results[name] = samples / clock.seconds
        print(
            f"{name:24s} {clock.seconds:7.1f} s, {samples} samples, {results[name]:7.1f} samples/s "
            f"({results[name] / results['synchronous']:.2f}x), reward {metrics.mean('reward/mean'):.3f}, "
            f"staleness {metrics.mean('async/staleness_mean'):.2f}, trainer wait "
            f"{metrics.mean('async/trainer_wait_s'):.2f} s/step, push {metrics.mean('async/weight_push_s'):.3f} s, "
            f"rollout {metrics.mean('rollout/seconds'):.3f} s/step, "
            f"idle {metrics.mean('async/worker_idle_share'):.2f}, "
            f"trained length {metrics.mean('rollout/length_mean'):.1f}, "
            f"expired {metrics.last('async/expired_prompts'):.0f}"
        )


class _Metrics(L.Callback):
    """Every timed step's logged values."""

    def __init__(self):
        self.seen: dict[str, list[float]] = {}

    def on_train_batch_end(self, trainer, *args):
        if trainer.fit_loop.epoch_loop.batch_progress.total.completed <= WARMUP:
            return
        for key, value in trainer.callback_metrics.items():
            self.seen.setdefault(key, []).append(float(value))

    def mean(self, key: str) -> float:
        return statistics.mean(self.seen[key]) if key in self.seen else float("nan")

    def last(self, key: str) -> float:
        return self.seen[key][-1] if key in self.seen else float("nan")


def run_agentic(args: argparse.Namespace) -> None:
    from zoo.envs.agent_rollout import run_agent_rollout
    from zoo.envs.simulated import SimulatedEnvironment
    from zoo.generation.native import NativeEngine
    from zoo.models import build_model, config_from_dict

    data = PromptDataModule(task="arithmetic", train_size=args.groups + args.extra_groups, val_size=0, vocab_size=64)
    data.setup()
    torch.manual_seed(args.seed)
    config = dict(arch="gpt_neox", vocab_size=len(data.tokenizer), hidden_size=32, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)  # fmt: skip
    engine = NativeEngine(build_model(config_from_dict(config)).eval(), tokenizer=data.tokenizer)
    params = SamplingParams(max_new_tokens=args.new, temperature=1.0, stop_token_ids=data.stop_token_ids, seed=0)
    mean = args.latency_ms / 1000

    def environment(problem, seed):
        return SimulatedEnvironment(mean, mean, turns=args.turns, observation=" ok", seed=seed)

    arms = {
        "synchronous": dict(synchronous=True),
        "env-level async": {},
        f"+ redundancy ({args.extra_groups} groups, 1 a group)": dict(extra_groups=args.extra_groups, redundancy=1),
    }
    print(f"{args.groups} groups x {args.group_size} trajectories, {args.turns} turns of <= {args.new} tokens, "
          f"environment steps normal({args.latency_ms:g} ms, {args.latency_ms:g} ms)")  # fmt: skip
    base = None
    for name, options in arms.items():
        times, env = [], []
        for repeat in range(args.repeats):
            launch = data.train_set[: args.groups + options.get("extra_groups", 0)]
            p = SamplingParams(**{**vars(params), "seed": repeat})
            outcome = run_agent_rollout(engine, launch, environment, p, data.tokenizer, args.group_size,
                                        num_groups=args.groups, max_turns=args.turns, max_context=256,
                                        **{k: v for k, v in options.items() if k != "extra_groups"},
                                        extra_groups=options.get("extra_groups", 0))  # fmt: skip
            times.append(outcome.stats.seconds)
            env.append(outcome.stats.env_seconds)
        seconds = statistics.mean(times)
        base = base or seconds
        print(
            f"{name:34s} {seconds:6.3f} s ({base / seconds:.2f}x), environment time summed {statistics.mean(env):.2f} s"
        )


PARITY_ARMS = {"synchronous": [], "alpha=1": ["rollout.async_ratio=1"], "alpha=2": ["rollout.async_ratio=2"]}


def run_parity(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    threads, quiet = threads_per_run(args.parallel), "trainer.enable_progress_bar=false"

    def sft(seed: int) -> None:
        name = f"sft_{seed}"
        if latest_run(workdir, name) is None:
            zoo(workdir, threads, f"{name}.log", "fit", "experiment=arithmetic_sft", f"seed={seed}", f"name={name}",
                quiet)  # fmt: skip
        zoo(workdir, threads, f"push_{name}.log", "hub", "push", str(latest_run(workdir, name)), "--name",
            f"arithmetic-sft-{seed}", "--force")  # fmt: skip

    def grpo(arm: str, seed: int) -> float:
        name = f"grpo_{arm.replace('=', '')}_{seed}"
        if latest_run(workdir, name) is None:
            zoo(workdir, threads, f"{name}.log", "fit", "experiment=arithmetic_grpo", f"seed={seed}", f"name={name}",
                f"model.init_from=hub:arithmetic-sft-{seed}", quiet, *PARITY_ARMS[arm])  # fmt: skip
        return json.loads((latest_run(workdir, name) / "metrics.json").read_text())["val/pass@1"]

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(sft, args.seeds))
        jobs = {(arm, seed): pool.submit(grpo, arm, seed) for seed in args.seeds for arm in PARITY_ARMS}
        results = {key: job.result() for key, job in jobs.items()}
    print("| arm | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std |")
    print("|---" * (len(args.seeds) + 2) + "|")
    for arm in PARITY_ARMS:
        values = [results[arm, seed] for seed in args.seeds]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {arm} | {cells} | {statistics.mean(values):.3f} ± {spread:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="the discrete-event simulator against Propositions 1 and 2")
    sim.add_argument("--workers", type=int, nargs="+", default=[8, 16, 32])
    sim.add_argument("--alphas", type=float, nargs="+", default=[1, 2, 4])
    sim.add_argument("--samples", type=int, default=128)
    sim.add_argument("--steps", type=int, default=50)
    sim.add_argument("--sigma", type=float, default=1.2)
    sim.add_argument("--max", type=float, default=30.0)
    sim.add_argument("--train", type=float, default=0.05)
    sim.add_argument("--seed", type=int, default=0)
    real = commands.add_parser("real", help="GRPO through zoo's trainer, synchronous against asynchronous")
    real.add_argument("--alphas", type=float, nargs="+", default=[0, 1, 2, 4])
    real.add_argument("--prompts", type=int, default=4, help="prompts per step")
    real.add_argument("--n", type=int, default=4, help="responses per prompt")
    real.add_argument("--steps", type=int, default=40)
    real.add_argument("--train-steps", type=int, default=400, help="steps teaching the countdown model")
    real.add_argument("--tail-share", type=float, default=0.1)
    real.add_argument("--temperature", type=float, default=0.7)
    real.add_argument("--device", default="cpu")
    real.add_argument("--workers", default="process", choices=["thread", "process"], help="where the engine runs")
    real.add_argument("--worker-device", default=None, help="the workers' device (default: the trainer's)")
    real.add_argument("--seed", type=int, default=0)
    agentic = commands.add_parser("agentic", help="environment-level asynchrony against the synchronous loop")
    agentic.add_argument("--groups", type=int, default=16)
    agentic.add_argument("--group-size", type=int, default=4)
    agentic.add_argument("--extra-groups", type=int, default=2)
    agentic.add_argument("--turns", type=int, default=10)
    agentic.add_argument("--new", type=int, default=4, help="tokens a turn at most")
    agentic.add_argument("--latency-ms", type=float, default=10.0, help="mean = std of an environment step")
    agentic.add_argument("--repeats", type=int, default=3)
    agentic.add_argument("--seed", type=int, default=0)
    parity = commands.add_parser("parity", help="the arithmetic GRPO demo, synchronous against alpha = 1 and 2")
    parity.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parity.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parity.add_argument("--workdir", default="exp/async_parity")
    args = parser.parse_args()
    commands = {"simulate": run_simulation, "real": run_real, "agentic": run_agentic, "parity": run_parity}
    commands[args.command](args)


if __name__ == "__main__":
    main()
