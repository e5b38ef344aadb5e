"""Tail batching (zoo/rollout/samplers/tail_batching.py) against synchronous batching: rollout time for the same
samples trained.

``simulate``: a discrete-event model of rollout rounds. Every prompt has a persistent difficulty (the log-mean
of its response lengths, drawn once); each response's length is drawn around it and capped at the maximum
length, which gives the long tail of reasoning workloads (median ~500 tokens, P75 ~1k, longest 25-35x the
median). A decode step costs ``a + b x (responses still running)``; a round lasts until the scheduler's stop
rule (synchronous: its longest response; short round: P0 prompts with R0 finished responses, the other
responses of a completed prompt aborted). The scheduler deciding the rounds is zoo's own ``TailBatcher``. An
epoch's prompts are all trained in both modes (tail batching drains its queue at the end). Prints the shape of
RollPacker's Fig. 11: rollout time per epoch for eta in {1.0, 1.125, 1.25, 1.5}, varying eta_R, eta_P, both.

``real``: the native engine on the CPU with a tiny model trained here (about 40 s) to count down from the
number in its prompt, so that each prompt fixes its response length (at temperature 0.7 it counts without a
slip); the lengths are long-tailed: most prompts ask for a few tokens, one in ten for 120-250. Synchronous
batching and tail batching (eta = 1.25) train the same prompts x R0 samples; prints rollout-phase wall time and
samples/s of each.

    python bench/tail_batching.py simulate
    python bench/tail_batching.py real
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
import torch.nn.functional as F

from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.models import GPTNeoX, GPTNeoXConfig
from zoo.rollout.samplers.tail_batching import Launch, TailBatcher

RATIOS = (1.0, 1.125, 1.25, 1.5)


def run_epoch(batcher: TailBatcher, prompts: list[int], round_fn) -> tuple[float, int, int]:
    """Rounds until every prompt of ``prompts`` is trained once: (rollout time, trained samples, rounds).
    ``round_fn(launch) -> (seconds, positions in launch.prompts of the completed prompts)``."""
    position = 0

    def fresh(count: int, at_least: int) -> list[int]:
        nonlocal position
        taken = prompts[position : position + count]
        position += len(taken)
        return taken

    seconds, trained, rounds = 0.0, 0, 0
    p0, r0 = batcher.prompts_per_step, batcher.responses_per_prompt
    while position < len(prompts) or batcher.queue:
        if position + p0 > len(prompts) and len(batcher.queue) < p0:  # the epoch's end: drain what is left
            launch = Launch(prompts[position:] + batcher.queue, r0, None, r0, long=True)
            position, batcher.queue = len(prompts), []
        else:
            launch = batcher.plan(fresh)
        took, completed = round_fn(launch)
        batcher.finish(launch, completed)
        seconds, trained, rounds = seconds + took, trained + len(completed) * r0, rounds + 1
    return seconds, trained, rounds


# -- the simulator ------------------------------------------------------------------------------------------


class Simulator:
    def __init__(self, num_prompts: int, cap: int, seed: int, step_s: float = 0.02, row_s: float = 5e-5) -> None:
        self.rng = random.Random(seed)
        self.mu = [math.log(500) + 0.9 * self.rng.gauss(0, 1) for _ in range(num_prompts)]  # persistent
        self.cap, self.step_s, self.row_s = cap, step_s, row_s

    def length(self, prompt: int) -> int:
        return max(1, min(self.cap, round(math.exp(self.mu[prompt] + 0.5 * self.rng.gauss(0, 1)))))

    def round(self, launch: Launch) -> tuple[float, list[int]]:
        lengths = {p: sorted(self.length(p) for _ in range(launch.n)) for p in launch.prompts}
        if launch.quota is None:
            end = max(max(v) for v in lengths.values())
            return self._cost(end, lengths, {}), list(range(len(launch.prompts)))
        complete = {p: v[launch.complete_at - 1] for p, v in lengths.items()}
        order = sorted(range(len(launch.prompts)), key=lambda i: (complete[launch.prompts[i]], i))
        done = sorted(order[: launch.quota])
        end = max(complete[launch.prompts[i]] for i in done)
        return self._cost(end, lengths, {p: complete[p] for p in launch.prompts}), done

    def _cost(self, end: int, lengths: dict[int, list[int]], abort_at: dict[int, int]) -> float:
        """Decode steps ``end`` at ``step_s`` each, plus ``row_s`` per running response per step."""
        rows = sum(min(length, abort_at.get(p, end), end) for p, v in lengths.items() for length in v)
        return end * self.step_s + rows * self.row_s


def simulate(args) -> None:
    prompts = list(range(args.prompts))
    print(f"rollout time per epoch (simulated s), {args.prompts} prompts, P0={args.p0}, R0={args.r0}")
    print(f"{'config':28s} {'cap':>6s} " + " ".join(f"eta={r:<6}" for r in RATIOS) + "  best speedup")
    for cap in (8192, 16384, 32768):
        baseline = None
        for label, ratios in (
            ("vary eta_R (eta_P = 1)", [(1.0, r) for r in RATIOS]),
            ("vary eta_P (eta_R = 1)", [(r, 1.0) for r in RATIOS]),
            ("eta_P = eta_R", [(r, r) for r in RATIOS]),
        ):
            times = []
            for eta_p, eta_r in ratios:
                sim = Simulator(args.prompts, cap, args.seed)
                batcher = TailBatcher(args.p0, args.r0, eta_p, eta_r)
                seconds, trained, _ = run_epoch(batcher, prompts, sim.round)
                assert trained == args.prompts * args.r0  # the same samples in every configuration
                times.append(seconds)
            baseline = baseline or times[0]
            cells = " ".join(f"{t:10.0f}" for t in times)
            print(f"{label:28s} {cap:6d} {cells}  {baseline / min(times):.2f}x")


# -- the real run ---------------------------------------------------------------------------------------------

START, LONGEST = 251, 250  # vocabulary: 0 = EOS, 1..250 numbers, 251 the prompt marker


def countdown_model(seed: int, steps: int, device: str = "cpu") -> GPTNeoX:
    """A tiny GPT-NeoX taught to answer [START, k] with k-1, k-2, ..., 1, EOS (k tokens)."""
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=LONGEST + 8,
    )
    model = GPTNeoX(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    width = LONGEST + 2
    for _ in range(steps):
        ks = torch.randint(1, LONGEST + 1, (32,))
        rows = torch.zeros(32, width + 1, dtype=torch.long)
        targets = torch.full((32, width), -100)
        for i, k in enumerate(ks.tolist()):
            sequence = [START, k, *range(k - 1, 0, -1), 0]
            rows[i, : len(sequence)] = torch.tensor(sequence)
            targets[i, : len(sequence) - 1] = torch.tensor(sequence[1:])
            targets[i, 0] = -100  # the prompt's number is given, not predicted
        rows, targets = rows.to(device), targets.to(device)
        loss = F.cross_entropy(model(rows[:, :-1]).flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def real(args) -> None:
    start = time.perf_counter()
    model = countdown_model(args.seed, args.train_steps, args.device)
    print(f"trained the countdown model in {time.perf_counter() - start:.0f} s")
    rng = random.Random(args.seed)
    lengths = [  # most prompts ask for a few tokens; one in ten for 120-250, 20-40x the median
        rng.randint(120, LONGEST)
        if rng.random() < args.tail_share
        else max(2, round(6 * math.exp(0.5 * rng.gauss(0, 1))))
        for _ in range(args.prompts)
    ]
    prompts = [[START, k] for k in lengths]
    engine = NativeEngine(model)
    for rows in (1, 2, 4, 8, 16, 32, 64, 128):  # warm-up (on a GPU: capture every batch bucket's decode graph)
        engine.generate(prompts[:1], rows, SamplingParams(max_new_tokens=LONGEST + 4, stop_token_ids=(), seed=0))
    order = list(range(args.prompts))
    print(
        f"{args.prompts} prompts, response length median {sorted(lengths)[len(lengths) // 2]}, "
        f"P75 {sorted(lengths)[3 * len(lengths) // 4]}, max {max(lengths)}; P0={args.p0}, R0={args.r0}"
    )
    results = {}
    for name, eta in (("synchronous", 1.0), ("tail batching", args.eta)):
        longest: list[int] = []
        calls = 0

        def round_fn(launch: Launch, longest: list[int] = longest) -> tuple[float, list[int]]:
            nonlocal calls
            params = SamplingParams(
                max_new_tokens=LONGEST + 4, temperature=args.temperature, stop_token_ids=(0,), seed=calls
            )
            calls += 1
            begin = time.perf_counter()
            result = engine.generate(
                [prompts[p] for p in launch.prompts], launch.n, params, launch.quota, launch.complete_at
            )
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - begin
            longest.append(max(len(s.token_ids) for s in result.samples))
            return seconds, sorted({s.prompt_index for s in result.samples})

        batcher = TailBatcher(args.p0, args.r0, eta, eta)
        seconds, trained, rounds = run_epoch(batcher, order, round_fn)
        results[name] = seconds
        print(
            f"{name:14s} rollout {seconds:6.1f} s, {trained} samples, {trained / seconds:7.1f} samples/s, "
            f"{rounds} rounds ({batcher.short_rounds} short, {batcher.long_rounds} long), "
            f"mean longest response per round {sum(longest) / len(longest):.0f} tokens"
        )
    print(f"rollout-phase speedup of tail batching: {results['synchronous'] / results['tail batching']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["simulate", "real"])
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--p0", type=int, default=None, help="prompts per step")
    parser.add_argument("--r0", type=int, default=None, help="responses per prompt")
    parser.add_argument("--eta", type=float, default=1.25, help="real: eta_P = eta_R of tail batching")
    parser.add_argument("--train-steps", type=int, default=400, help="real: steps teaching the countdown model")
    parser.add_argument("--tail-share", type=float, default=0.1, help="real: share of prompts with long answers")
    parser.add_argument("--temperature", type=float, default=0.7, help="real: sampling temperature of rollouts")
    parser.add_argument("--device", default="cpu", help="real: where the model trains and decodes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    defaults = {"simulate": (2048, 128, 8), "real": (512, 16, 4)}[args.mode]
    given = (args.prompts, args.p0, args.r0)
    args.prompts, args.p0, args.r0 = (v if v is not None else d for v, d in zip(given, defaults, strict=True))
    simulate(args) if args.mode == "simulate" else real(args)


if __name__ == "__main__":
    main()
