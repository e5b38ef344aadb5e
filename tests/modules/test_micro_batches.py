"""Micro-batches (module.algorithm.micro_batch_size / micro_batch_tokens): a minibatch split into micro-batches, each
forward on its own and the gradients accumulated, gives the unsplit step's loss, logged terms and gradient (≤ 1e-6,
fp32) for every method and loss aggregation; the forwards without gradients (old and reference log-probs, critic
values) are split the same way. Padding-free forwards (module.algorithm.padding_free: packed rows) give the padded
step's. A token budget below a row is one line."""

import lightning as L
import pytest
import torch

from zoo.analysis.tensor_memory import TensorMemory
from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.modules.asyppo import AsyPPOModule
from zoo.modules.grpo import GRPOModule
from zoo.modules.ppo import PPOModule
from zoo.modules.ravr import RAVRModule
from zoo.rl.rollout import RolloutBatch
from zoo.rollout.callback import RolloutCallback

POLICY = dict(arch="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip
SPLITS = [dict(micro_batch_size=3), dict(micro_batch_tokens=40)]
PACKED = dict(padding_free=True, micro_batch_tokens=40)  # packed rows, micro-batches of 40 real tokens


class _FirstStep(L.Callback):
    """The gradients (before clipping, none is set) and the logged terms of the first optimizer step."""

    def __init__(self):
        self.grads, self.metrics = None, None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, *args):
        if self.metrics is None:
            self.metrics = {k: v.clone() for k, v in trainer.callback_metrics.items()}


class _VariedLengths(PromptDataModule):
    """Completions end at any of the first 32 token ids: their lengths vary (up to 16 tokens), so that short rows
    share a packed row."""

    @property
    def stop_token_ids(self):
        return tuple(range(32))


def _data(task="arithmetic"):
    if task == "varied":
        data = _VariedLengths(task="arithmetic", train_size=40, val_size=4, batch_size=3, vocab_size=64)
    elif task == "methods":
        data = PromptDataModule(task="methods", options={"methods": 2, "keywords": 4}, train_size=40, val_size=4,
                                batch_size=3, vocab_size=64, posterior_prompt="answer {answer}: {prompt}")  # fmt: skip
    else:
        data = PromptDataModule(task="arithmetic", train_size=40, val_size=4, batch_size=3, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(len(c) % 2)  # varies within a group
    return data


def _first_step(cpu_trainer, module_class, task="arithmetic", algorithm=None, policy=POLICY, **settings):
    torch.manual_seed(0)
    data = _data(task)
    policy = {**policy, "vocab_size": len(data.tokenizer)}
    module = module_class(
        policy,
        optim=dict(lr=1e-3, warmup_steps=0, grad_clip=None),
        rollout=dict(n=4, max_new_tokens=16 if task == "varied" else 8),
        algorithm={"kl_coef": 0.05, "entropy_coef": 0.01, **(algorithm or {})},
        **settings,
    )
    record = _FirstStep()
    trainer = cpu_trainer(max_steps=1, limit_val_batches=0, callbacks=[RolloutCallback(), record])
    trainer.fit(module, datamodule=data)
    return record


def _assert_split_equals_unsplit(cpu_trainer, module_class, split, **settings):
    algorithm = settings.pop("algorithm", {})
    whole = _first_step(cpu_trainer, module_class, algorithm=algorithm, **settings)
    parts = _first_step(cpu_trainer, module_class, algorithm={**algorithm, **split}, **settings)
    assert whole.grads.keys() == parts.grads.keys() and whole.grads
    for name, grad in whole.grads.items():
        torch.testing.assert_close(parts.grads[name], grad, rtol=0, atol=1e-6, msg=name)
    logged = [k for k in whole.metrics if k.startswith(("train/loss", "policy/", "critic/", "asyppo/", "ravr/"))]
    assert "train/loss" in logged
    for key in logged:
        torch.testing.assert_close(parts.metrics[key], whole.metrics[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    "aggregation, split",
    [("token_mean", SPLITS[0]), ("seq_mean_token_mean", SPLITS[1]), ("seq_mean_token_sum", SPLITS[0])],
    ids=["token_mean-rows", "seq_mean_token_mean-tokens", "seq_mean_token_sum-rows"],
)
def test_grpo_split_equals_unsplit(cpu_trainer, aggregation, split):
    _assert_split_equals_unsplit(cpu_trainer, GRPOModule, split, algorithm=dict(aggregation=aggregation))


@pytest.mark.parametrize(
    "pg",
    [
        dict(pg_variant="decoupled_ppo", pg_options=dict(filter=[0.8, 1.25])),
        dict(pg_variant="cispo", pg_options=dict(unified_mask=True)),
    ],
    ids=["decoupled-filter", "cispo-unified-mask"],
)
def test_a_variant_that_leaves_tokens_out_split_equals_unsplit(pg):
    """The sampler's log-probs 0.3 apart from the trainer's: the variant drops a share of the tokens, each of which
    still counts in the minibatch's denominator, split or not."""
    torch.manual_seed(0)
    module = GRPOModule(POLICY, algorithm=dict(**pg, clip_low=0.1, clip_high=0.1))
    module.configure_model()
    rows, width = 12, 14
    input_ids = torch.randint(1, 64, (rows, width + 1))
    mask = torch.zeros(rows, width)
    for row in range(rows):
        mask[row, 3 : 3 + int(torch.randint(2, width - 3, ()))] = 1  # completions of different lengths
    with torch.no_grad():
        old = module.logprobs_of(module.model, RolloutBatch(input_ids, mask, mask, torch.arange(rows)))
    batch = RolloutBatch(input_ids, mask, old + 0.3 * torch.randn(rows, width), torch.arange(rows) // 4)
    batch.old_logprobs, batch.advantages = old, torch.randn(rows, 1) * mask
    batch.rewards = torch.randn(rows)
    outcomes = []
    for size in (None, 3):
        module.zero_grad()
        module.start_minibatch(batch)
        total, logs = 0.0, {}
        for part in batch.micro_batches(size=size):
            loss, part_logs = module.loss(part)
            loss.backward()
            total = total + loss.detach()
            logs = {name: logs.get(name, 0.0) + value for name, value in part_logs.items()}
        outcomes.append((total, logs, {n: p.grad.clone() for n, p in module.model.named_parameters()}))
    (loss, logs, grads), (split_loss, split_logs, split_grads) = outcomes
    torch.testing.assert_close(split_loss, loss, rtol=0, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(split_grads[name], grad, rtol=0, atol=1e-6, msg=name)
    for name, value in logs.items():
        torch.testing.assert_close(split_logs[name], value, rtol=1e-5, atol=1e-6, msg=name)
    if pg["pg_variant"] == "decoupled_ppo":
        assert 0.1 < logs["policy/filtered_fraction"] < 0.9  # tokens were left out


def test_ppo_with_its_critic_split_equals_unsplit(cpu_trainer):
    _assert_split_equals_unsplit(cpu_trainer, PPOModule, SPLITS[1], algorithm=dict(aggregation="seq_mean_token_mean"))


@pytest.mark.parametrize("population", ["minibatch", "batch"])
def test_asyppo_split_equals_unsplit(cpu_trainer, population):
    """σ's masks are quantiles over the minibatch (or the batch), taken before the split; each critic's value loss is
    over its own shard of the minibatch."""
    asyppo = dict(critics=2, critic_model=dict(hidden_size=16, intermediate_size=32), mask_population=population)
    _assert_split_equals_unsplit(cpu_trainer, AsyPPOModule, SPLITS[0], asyppo=asyppo)


@pytest.mark.parametrize("split", [SPLITS[0], dict(padding_free=True)], ids=["rows", "padding-free"])
def test_ravr_split_equals_unsplit(cpu_trainer, monkeypatch, split):
    """The prior's and the posterior's terms, each over its own rows of the minibatch, and the distillation. The
    utility pass runs whole in both runs here: split, its rounding moves utilities by ~1e-7, which can flip a
    distillation weight at its threshold (its own split is checked in tests/rl/methods/test_ravr_answer_posterior.py).
    """
    import zoo.modules.ravr as ravr

    whole = ravr.answer_utility
    unsplit = lambda model, contexts, answers, **split: whole(model, contexts, answers)  # noqa: E731
    monkeypatch.setattr(ravr, "answer_utility", unsplit)
    _assert_split_equals_unsplit(cpu_trainer, RAVRModule, split, task="methods")


def test_a_llama_family_policy_split_and_packed_equals_unsplit(cpu_trainer, llama_family_policy):
    algorithm = dict(aggregation="seq_mean_token_mean")
    for split in (PACKED, dict(padding_free=True)):
        _assert_split_equals_unsplit(
            cpu_trainer, GRPOModule, split, task="varied", algorithm=algorithm, policy=llama_family_policy
        )


@pytest.mark.parametrize(
    "module_class, settings",
    [
        (GRPOModule, dict(algorithm=dict(aggregation="token_mean"))),
        (PPOModule, {}),
        (AsyPPOModule, dict(asyppo=dict(critics=2, critic_model=dict(hidden_size=16, intermediate_size=32)))),
    ],
    ids=["grpo", "ppo", "asyppo"],
)
def test_padding_free_equals_padded(cpu_trainer, monkeypatch, module_class, settings):
    """Log-probs, reference log-probs, critic values and the update on packed rows (several sequences to a row),
    unsplit and in micro-batches."""
    import zoo.rl.packing as packing

    shared = []  # sequences that shared a packed row with another, per packed forward
    of = packing.PackedRows.of.__func__
    monkeypatch.setattr(packing.PackedRows, "of", classmethod(lambda cls, *a: _counted(of(cls, *a), shared)))
    _assert_split_equals_unsplit(cpu_trainer, module_class, dict(padding_free=True), task="varied", **settings)
    _assert_split_equals_unsplit(cpu_trainer, module_class, PACKED, task="varied", **settings)
    assert max(shared) > 0


def _counted(packed, shared):
    shared.append(int(packed.rows.unique().numel()) - len(packed.input_ids))
    return packed


def test_credit_assignment_split_equals_unsplit(cpu_trainer):
    _assert_split_equals_unsplit(
        cpu_trainer, GRPOModule, SPLITS[1], credit="coupled", credit_options=dict(horizon=[1, 4], window=2)
    )


def test_a_step_that_does_not_fit_unsplit_fits_in_micro_batches():
    """Under a tensor-memory limit (TensorMemory raises as a device of that size would): the GRPO update of a 48-row
    minibatch runs out of memory unsplit and fits in micro-batches of 96 tokens, with the unsplit step's gradient."""
    torch.manual_seed(0)
    module = GRPOModule({**POLICY, "hidden_size": 64, "intermediate_size": 256}, algorithm=dict(micro_batch_tokens=96))
    module.configure_model()
    rows, width = 48, 40
    mask = torch.zeros(rows, width)
    for row in range(rows):
        mask[row, 5 : 5 + int(torch.randint(8, width - 5, ()))] = 1
    batch = RolloutBatch(torch.randint(1, 64, (rows, width + 1)), mask, torch.zeros(rows, width), torch.arange(rows))
    batch.advantages, batch.rewards = torch.randn(rows, 1) * mask, torch.randn(rows)

    def step(split: dict) -> dict[str, torch.Tensor]:
        module.zero_grad(set_to_none=True)
        module.start_minibatch(batch)
        for part in batch.micro_batches(**split):
            module.loss(part)[0].backward()
        return {n: p.grad.clone() for n, p in module.model.named_parameters()}

    whole = step({})
    with TensorMemory() as measured:
        parts = step(module.micro_batching)
    limit = int(1.25 * measured.peak)
    with pytest.raises(torch.OutOfMemoryError), TensorMemory(limit=limit):
        step({})
    with TensorMemory(limit=limit):
        step(module.micro_batching)
    for name, grad in whole.items():
        torch.testing.assert_close(parts[name], grad, rtol=0, atol=1e-6, msg=name)


def test_micro_batches_hold_the_budget_and_every_row_once():
    torch.manual_seed(0)
    lengths = [9, 3, 12, 5, 5, 7, 2, 12]
    N, L = len(lengths), 12
    mask = torch.zeros(N, L - 1)
    for row, length in enumerate(lengths):
        mask[row, 1 : length - 1] = 1  # target positions 1 .. length - 2
    batch = RolloutBatch(torch.randint(1, 50, (N, L)), mask, torch.zeros(N, L - 1), torch.arange(N))
    assert batch.lengths().tolist() == [max(n, 2) for n in lengths]
    parts = batch.micro_batch_rows(tokens=24)
    assert sorted(torch.cat(parts).tolist()) == list(range(N))
    for rows in parts:
        assert len(rows) * max(lengths[r] for r in rows) <= 24
    assert max(len(rows) for rows in batch.micro_batch_rows(size=3)) == 3
    out = batch.map_micro_batches(lambda part: part.response_mask * 2, tokens=24)
    torch.testing.assert_close(out, mask * 2)
    trimmed = batch.trimmed(torch.tensor([1, 3]))
    assert trimmed.input_ids.shape == (2, 5) and trimmed.response_mask.shape == (2, 4)


def test_a_token_budget_below_a_row_is_one_line():
    batch = RolloutBatch(torch.ones(2, 10, dtype=torch.long), torch.ones(2, 9), torch.zeros(2, 9), torch.arange(2))
    with pytest.raises(ConfigError, match=r"micro_batch_tokens=8 is below the longest row of the batch \(10 tokens"):
        batch.micro_batches(tokens=8)


@pytest.mark.parametrize("key", ["micro_batch_size", "micro_batch_tokens"])
def test_a_micro_batch_setting_below_one_is_named(key):
    with pytest.raises(ConfigError, match=f"module.algorithm.{key}"):
        GRPOModule(POLICY, algorithm={key: 0})
