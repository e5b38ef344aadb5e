"""Attention-based credit assignment (arXiv:2510.13554; notes §1.8): the experiments of docs/methods/credit.md.

    python bench/credit.py --experiment arms [--arms none random coupled] [--seeds 1337 1 2] [--out DIR]
    python bench/credit.py --experiment perturbation [--policy hub:chain-sft] [--problems 64]
    python bench/credit.py --experiment overhead [--steps 6] [--map-budget-mb 0]
    python bench/credit.py --experiment memory [--length 8192] [--budgets 256 4096]

``arms`` runs ``zoo fit experiment=chain_grpo module.credit=ARM seed=SEED`` for every arm and seed, from the hub
entry ``chain-sft`` (``zoo fit experiment=chain_sft``, then ``zoo hub push RUN --name chain-sft``; ZOO_HUB names
the hub), and prints per arm the greedy pass@1 of the final policy on ``--eval-size`` held-out prompts (``zoo
validate`` of the run's last checkpoint; the training's own validation uses 128) and the area under the
reward-vs-step curve (the mean of the training reward as logged, every 10th step), each per seed and as
mean ± std, then writes the mean reward curve of every arm to DIR/credit_arms.png. ``--parallel 2`` runs two at
a time, one thread each; ``--reuse`` evaluates the runs already there instead of training them again.

``perturbation`` (the paper's Table 1, on the chain task): for each held-out prompt, the policy's greedy response;
the FAI of its tokens (the global heads' mean map, as the credit stage computes it); at the response token of
highest FAI, at the one of lowest and at one drawn at random, the token is replaced by the policy's best other
choice and the rest is decoded greedily again. It prints, per kind of position, the mean Jaccard similarity of
the items (numbers and symbols) of the new continuation with the original one and where in the response the
positions lie, and how often the top-FAI swap changed the continuation more (lower Jaccard) than the bottom-FAI
swap.

``overhead``: the attention pass as a share of a GRPO training step (rollout, scoring, pass, update), measured
in one process on two settings: the chain experiment's policy and responses, and a 6-layer Pythia-14M-shaped
policy with 256-token responses.

``memory``: the attention pass over one sample of ``--length`` tokens (a 1/4 prompt, the rest response) of a
6-layer Pythia-14M-shaped policy (4 heads; three layers read), under each ``--budgets`` map budget (MiB): its peak
tensor memory above what it started with (the CUDA allocator's peak, or on the CPU
:class:`zoo.analysis.tensor_memory.TensorMemory`) beside a plain forward's over the same tokens, its time, and
what one head's maps weigh (``MAP_COPIES`` fp32 copies of N²).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from zoo_runs import latest_run, scalars, threads_per_run, zoo

ARMS = ("none", "random", "local", "global", "coupled")


# -- arms ----------------------------------------------------------------------------------------------------------
def _train_and_evaluate(arm: str, seed: int, opts, threads: int) -> tuple[Path, float]:
    """The run of ``arm`` and ``seed`` (reused when ``--reuse`` finds it), and its final policy's greedy pass@1 on
    ``--eval-size`` held-out prompts."""
    workdir, name = Path(opts.workdir).resolve(), f"credit_{arm}_{seed}"
    run = latest_run(workdir, name) if opts.reuse else None
    if run is None:
        overrides = ["experiment=chain_grpo", f"module.credit={arm}", f"seed={seed}", f"name={name}", *opts.extra]
        zoo(workdir, threads, f"{name}.log", "fit", *overrides, "trainer.enable_progress_bar=false")
        run = latest_run(workdir, name)
    evaluation = f"eval_{name}"
    zoo(workdir, threads, f"{evaluation}.log", "validate", f"ckpt_path={run}", f"data.val_size={opts.eval_size}",
        f"name={evaluation}", "trainer.enable_progress_bar=false")  # fmt: skip
    return run, json.loads((latest_run(workdir, evaluation) / "metrics.json").read_text())["val/pass@1"]


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def arms(opts) -> None:
    jobs = [(arm, seed) for arm in opts.arms for seed in opts.seeds]
    threads = threads_per_run(opts.parallel)
    with ThreadPoolExecutor(opts.parallel) as pool:
        done = dict(zip(jobs, pool.map(lambda job: _train_and_evaluate(*job, opts, threads), jobs), strict=True))
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    print(
        f"| credit | held-out pass@1 ({opts.eval_size} prompts) per seed | pass@1 mean ± std | reward AUC mean ± std |"
    )
    print("|---|---|---|---|")
    for arm in opts.arms:
        finals = [done[arm, s][1] for s in opts.seeds]
        curves[arm] = [scalars(done[arm, s][0], "reward/mean") for s in opts.seeds]
        auc = [statistics.mean(values) for _, values in curves[arm]]
        print(f"| {arm} | {' / '.join(f'{v:.3f}' for v in finals)} | {_spread(finals)} | {_spread(auc)} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for arm, seeds in curves.items():
        length = min(len(values) for _, values in seeds)
        mean = torch.tensor([values[:length] for _, values in seeds]).mean(0)
        axis.plot(seeds[0][0][:length], mean.tolist(), label=arm, marker=".")
    axis.set_xlabel("step")
    axis.set_ylabel(f"training reward (mean of {len(opts.seeds)} seeds)")
    axis.legend()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "credit_arms.png", dpi=120, bbox_inches="tight")
    print(f"plot: {out / 'credit_arms.png'}")


# -- perturbation --------------------------------------------------------------------------------------------------
def _items(text: str) -> set[str]:
    return set(re.findall(r"\d+|[^\d\s]", text))


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def perturbation(opts) -> None:
    from transformers import PreTrainedTokenizerFast

    from zoo.generation.native import NativeEngine
    from zoo.generation.sampling import SamplingParams
    from zoo.hub.store import load_model
    from zoo.rl.methods.attention_credit import CreditAssignment
    from zoo.rl.rollout import assemble
    from zoo.tasks.registry import chain_problems

    loaded = load_model(opts.policy)
    model = loaded.model.eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(loaded.tokenizer_dir / "tokenizer.json"))
    engine = NativeEngine(model, tokenizer)
    greedy = SamplingParams(opts.max_new_tokens, 0.0, stop_token_ids=[0])
    problems = chain_problems(opts.problems, seed=99_991, teacher_error=0.5)
    prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    result = engine.generate(prompts, 1, greedy)
    batch = assemble(prompts, result.samples)
    credit = CreditAssignment("global", dict(window=opts.window, horizon=opts.horizon))
    signals = credit.signals(model, batch, temperature=1.0)
    kinds = ("top-FAI", "bottom-FAI", "random")  # the highest- and lowest-FAI response token, one drawn at random
    draw = torch.Generator().manual_seed(0)
    swaps, originals, where = [], [], {kind: [] for kind in kinds}
    for i, sample in enumerate(result.samples):
        start, response = len(prompts[i]), sample.token_ids
        candidates = [start + j for j in range(len(response) - 1) if signals.fai_defined[i, start + j]]
        if len(candidates) < 2:
            continue
        fai = signals.fai[i, candidates]
        chosen = (int(fai.argmax()), int(fai.argmin()), int(torch.randint(len(candidates), (1,), generator=draw)))
        for kind, index in zip(kinds, chosen, strict=True):
            position = candidates[index]
            where[kind].append((position - start) / len(response))
            prefix = prompts[i] + response[: position - start]
            with torch.no_grad():
                logits = model(torch.tensor([prefix]))[0, -1]
            logits[response[position - start]] = float("-inf")  # the best other choice
            swaps.append(prefix + [int(logits.argmax())])
            originals.append(tokenizer.decode(response[position - start + 1 :], skip_special_tokens=True))
    continuations = engine.generate(swaps, 1, greedy).samples
    similarity = {kind: [] for kind in kinds}
    for k, (continuation, original) in enumerate(zip(continuations, originals, strict=True)):
        text = tokenizer.decode(continuation.token_ids, skip_special_tokens=True)
        similarity[kinds[k % len(kinds)]].append(_jaccard(_items(text), _items(original)))
    top, bottom = similarity["top-FAI"], similarity["bottom-FAI"]
    lower = sum(t < b for t, b in zip(top, bottom, strict=True)) / len(top)
    ties = sum(t == b for t, b in zip(top, bottom, strict=True)) / len(top)
    print(f"{opts.policy}: {len(top)} greedy responses of {len(problems)} prompts")
    for kind in kinds:
        print(
            f"{kind} swap: Jaccard with the original continuation {statistics.mean(similarity[kind]):.3f}, "
            f"at {statistics.mean(where[kind]):.0%} of the response on average"
        )
    print(f"top-FAI swap lower than bottom-FAI swap in {lower:.1%} of trials (ties {ties:.1%})")


# -- overhead ------------------------------------------------------------------------------------------------------
def overhead(opts) -> None:
    import lightning as L

    from zoo.datamodules.prompts import PromptDataModule
    from zoo.modules.grpo import GRPOModule
    from zoo.rollout.callback import RolloutCallback

    class StepTimes(L.Callback):
        def __init__(self) -> None:
            self.steps, self.passes = [], []

        def on_train_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, *args) -> None:
            self.steps.append(time.perf_counter() - self.start)
            self.passes.append(float(trainer.callback_metrics["credit/pass_seconds"]))

    settings = {
        "chain policy (0.9M), responses up to 32 tokens": (
            dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
            32,
            16,
            8,
        ),
        "Pythia-14M shape (6 layers, d=128), 256-token responses": (
            dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
            256,
            4,
            4,
        ),
    }
    for label, (shape, length, prompts, n) in settings.items():
        torch.manual_seed(0)
        data = PromptDataModule(task="chain", train_size=500, val_size=8, batch_size=prompts, vocab_size=64)
        data.prepare_data()
        data.reward = lambda p, c, r: float(len(c) % 2)
        policy = dict(arch="gpt_neox", vocab_size=64, max_position_embeddings=length + 32, **shape)
        module = GRPOModule(
            policy, rollout=dict(n=n, max_new_tokens=length), credit="coupled",
            credit_options=dict(window=10, horizon=[10, 100], map_budget_mb=opts.map_budget_mb),
        )  # fmt: skip
        times = StepTimes()
        trainer = L.Trainer(
            accelerator="cpu", max_steps=opts.steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[RolloutCallback(), times],
        )  # fmt: skip
        trainer.fit(module, datamodule=data)
        steps, passes = times.steps[1:], times.passes[1:]  # the first step warms up
        share = sum(passes) / sum(steps)
        print(
            f"{label}: step {statistics.mean(steps):.3f} s, attention pass {statistics.mean(passes):.3f} s "
            f"({share:.1%} of the step), {prompts * n} sequences per step"
        )


def memory(opts) -> None:
    from zoo.analysis.tensor_memory import DeviceMemory
    from zoo.models import build_model, config_from_dict
    from zoo.models.attention_maps import MAP_COPIES
    from zoo.rl.methods.attention_credit import CreditAssignment
    from zoo.rl.rollout import RolloutBatch

    n, device = opts.length, "cuda" if torch.cuda.is_available() else "cpu"

    def peak_of(work) -> tuple[float, float]:
        start = time.perf_counter()
        with DeviceMemory(torch.device(device)) as memory:
            work()
        return memory.peak / 2**20, time.perf_counter() - start

    torch.manual_seed(0)
    shape = dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512)
    model = build_model(config_from_dict(dict(arch="gpt_neox", vocab_size=512, max_position_embeddings=n, **shape)))
    model.to(device).eval()
    ids = torch.randint(1, 512, (1, n), device=device)
    mask = torch.zeros(1, n - 1, device=device)
    mask[0, n // 4 :] = 1
    batch = RolloutBatch(ids, mask, torch.zeros_like(mask), torch.zeros(1, dtype=torch.long, device=device))
    with torch.no_grad():
        forward, _ = peak_of(lambda: model(ids))
    one_head = MAP_COPIES * n**2 * 4 / 2**20
    print(f"{n} tokens, {device}: a forward alone {forward:,.0f} MiB; one head's maps, every copy, {one_head:,.0f} MiB")
    for budget in opts.budgets:
        credit = CreditAssignment("coupled", dict(map_budget_mb=budget, entropy_overlap=False))
        peak, seconds = peak_of(lambda credit=credit: credit.signals(model, batch, temperature=1.0))
        print(f"map_budget_mb {budget:>6}: the pass's peak {peak:,.0f} MiB, {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["arms", "perturbation", "overhead", "memory"], required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="trainings at a time (arms)")
    parser.add_argument("--workdir", default=".", help="where the runs go (arms); its hub must hold chain-sft")
    parser.add_argument("--out", default=".", help="where the plot goes (arms)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every training (arms)")
    parser.add_argument("--eval-size", type=int, default=1000, help="held-out prompts of the final evaluation")
    parser.add_argument("--reuse", action="store_true", help="arms: evaluate the runs already in --workdir")
    parser.add_argument("--policy", default="hub:chain-sft", help="perturbation: the policy")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--horizon", type=int, nargs=2, default=[2, 24])
    parser.add_argument("--steps", type=int, default=6, help="overhead: training steps per setting")
    parser.add_argument("--map-budget-mb", type=float, default=256, help="overhead: 0 passes one sample at a time")
    parser.add_argument("--length", type=int, default=8192, help="memory: the sample's tokens")
    parser.add_argument("--budgets", type=float, nargs="+", default=[256, 4096], help="memory: map budgets (MiB)")
    opts = parser.parse_args()
    {"arms": arms, "perturbation": perturbation, "overhead": overhead, "memory": memory}[opts.experiment](opts)


if __name__ == "__main__":
    main()
