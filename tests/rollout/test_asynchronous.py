"""Asynchronous rollout (zoo/rollout/samplers/asynchronous.py, zoo/rollout/workers/worker.py) in a Lightning Trainer: α
= 0 gives the synchronous schedule's weights bit for bit (over an epoch boundary too); α > 0 trains within the staleness
bound and logs what it did; the sampler's state restores; bad settings are named."""

import lightning as L
import pytest
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.generation.core import EngineCore
from zoo.modules.grpo import GRPOModule
from zoo.rollout.callback import RolloutCallback

POLICY = dict(arch="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip


class _Staleness(L.Callback):
    """Records every step's logged staleness."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, *args):
        self.seen.append(trainer.callback_metrics["async/staleness_max"].item())


def _fit(
    cpu_trainer, steps=4, train_size=64, algorithm=None, extra_callbacks=(), trainer_options=None, policy=POLICY,
    **rollout,
):  # fmt: skip
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=train_size, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("1"))  # a reward the random policy sometimes earns
    module = GRPOModule(
        policy, optim=dict(lr=1e-3, warmup_steps=1), rollout=dict(n=4, max_new_tokens=5), algorithm=algorithm
    )
    callback = RolloutCallback(**rollout)
    options = dict(
        max_steps=steps, limit_val_batches=0, callbacks=[callback, *extra_callbacks], **(trainer_options or {})
    )
    trainer = cpu_trainer(**options)
    trainer.fit(module, datamodule=data)
    return module, trainer, callback


def _assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "steps, train_size, algorithm",
    # 10 prompts: 2 steps of 4 an epoch (2 left out at each epoch's end); 4 optimizer steps a batch
    [(4, 64, None), (16, 10, dict(ppo_epochs=2, minibatch_size=8))],
    ids=["one-update", "minibatches-across-epochs"],
)
def test_alpha_zero_gives_the_synchronous_weights_bit_for_bit(cpu_trainer, steps, train_size, algorithm):
    sync, _, _ = _fit(cpu_trainer, steps, train_size=train_size, algorithm=algorithm)
    asynchronous, trainer, callback = _fit(cpu_trainer, steps, train_size, algorithm, async_ratio=0)
    _assert_same_weights(sync, asynchronous)
    metrics = trainer.callback_metrics
    assert metrics["async/staleness_max"] == 0 and metrics["async/version"] == 3  # the fourth batch's version
    assert callback.sampler.workers == []  # stopped at the end of the fit


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module's Ray tests (its start costs seconds: once)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'zoo[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_on_the_llama_family_alpha_zero_gives_the_synchronous_weights(cpu_trainer, llama_family_policy):
    """A Llama policy's engine server in a spawned process, a Qwen3 policy's in a thread."""
    workers = "thread" if llama_family_policy.get("qk_norm") else "process"
    threads = torch.get_num_threads()
    sync, _, _ = _fit(cpu_trainer, policy=llama_family_policy)
    asynchronous, trainer, _ = _fit(cpu_trainer, policy=llama_family_policy, async_ratio=0, workers=workers)
    torch.set_num_threads(threads)
    _assert_same_weights(sync, asynchronous)
    assert trainer.callback_metrics["async/staleness_max"] == 0


def test_ray_workers_serve_a_llama_family_policy_at_alpha_zero_bit_for_bit(cpu_trainer, local_ray, llama_family_policy):
    """A Ray actor builds the family's native model from the policy's config and receives its weights through the
    object store: at α = 0 the trained weights equal the synchronous loop's."""
    threads = torch.get_num_threads()
    sync, _, _ = _fit(cpu_trainer, policy=llama_family_policy)
    asynchronous, trainer, _ = _fit(cpu_trainer, policy=llama_family_policy, async_ratio=0, workers="ray")
    torch.set_num_threads(threads)
    _assert_same_weights(sync, asynchronous)
    assert trainer.callback_metrics["async/staleness_max"] == 0 and trainer.callback_metrics["async/version"] == 3


def test_a_process_worker_gives_the_synchronous_weights_too(cpu_trainer):
    """The engine server in a spawned process (its own interpreter and policy copy, weights sent through shared
    memory) computes what the trainer's process computes."""
    threads = torch.get_num_threads()
    sync, _, _ = _fit(cpu_trainer)
    asynchronous, trainer, _ = _fit(cpu_trainer, async_ratio=0, workers="process")
    _assert_same_weights(sync, asynchronous)
    assert trainer.callback_metrics["async/version"] == 3
    assert torch.get_num_threads() == threads  # the trainer's threads are given back


@pytest.mark.gpu
@pytest.mark.parametrize("worker_device", [None, "cuda:1"])
def test_alpha_zero_on_a_gpu_gives_the_synchronous_weights(cpu_trainer, worker_device):
    """On the trainer's GPU (time-sliced) or on a second one."""
    if worker_device == "cuda:1" and torch.cuda.device_count() < 2:
        pytest.skip("one GPU: the worker on a second GPU needs two")
    gpu = dict(accelerator="gpu", devices=1)
    sync, _, _ = _fit(cpu_trainer, trainer_options=gpu)
    asynchronous, trainer, _ = _fit(cpu_trainer, trainer_options=gpu, async_ratio=0, worker_device=worker_device)
    _assert_same_weights(sync, asynchronous)


def test_two_process_workers_share_the_buffer(cpu_trainer):
    record = _Staleness()
    module, trainer, callback = _fit(
        cpu_trainer, steps=5, async_ratio=1, workers="process", num_workers=2, extra_callbacks=[record]
    )
    assert len(record.seen) == 5 and max(record.seen) <= 1
    assert callback.state_dict()["async"]["trained_prompts"] == 5 * 4


def test_ray_workers_train_asynchronously(cpu_trainer, local_ray):
    """Two rollout workers as Ray actors on a local Ray (the weights through its object store)."""
    record = _Staleness()
    module, trainer, callback = _fit(
        cpu_trainer, steps=4, async_ratio=1, workers="ray", num_workers=2, extra_callbacks=[record]
    )
    assert len(record.seen) == 4 and max(record.seen) <= 1
    assert trainer.callback_metrics["async/version"] == 3 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert callback.state_dict()["async"]["trained_prompts"] == 4 * 4


def test_a_failing_engine_stops_the_fit_with_its_own_error(cpu_trainer, monkeypatch):
    """The server's failure closes the buffer while the trainer waits: the trainer raises the worker's error, not the
    closed buffer's."""

    def broken_step(core):
        raise RuntimeError("planted engine failure")

    monkeypatch.setattr(EngineCore, "step", broken_step)
    with pytest.raises(RuntimeError, match="(?s)a rollout worker stopped.*planted engine failure"):
        _fit(cpu_trainer, steps=2, async_ratio=1)


@pytest.mark.parametrize("alpha", [1, 2])
def test_alpha_bounds_the_staleness_of_every_step(cpu_trainer, alpha):
    record = _Staleness()
    module, trainer, callback = _fit(cpu_trainer, steps=6, async_ratio=alpha, extra_callbacks=[record])
    assert len(record.seen) == 6 and max(record.seen) <= alpha
    metrics = trainer.callback_metrics
    for key in ("async/buffer_size", "async/expired_prompts", "async/trainer_wait_s", "async/worker_idle_share",
                "async/weight_push_s", "rollout/tokens_per_s", "reward/mean"):  # fmt: skip
        assert key in metrics, key
    assert torch.isfinite(metrics["train/loss"])
    state = callback.state_dict()["async"]
    buffer = state["buffer"]
    assert buffer["version"] == 6 and buffer["budget"] == 4 * (7 + alpha)
    # every prompt handed out is trained (6 steps of 4) or waits to be begun again after a resume
    assert state["trained_prompts"] == 24
    assert state["prompts"]["handed"] == 24 + len(buffer["returned"])


def test_the_sampler_state_restores_before_setup(cpu_trainer):
    module, trainer, callback = _fit(cpu_trainer, steps=3, async_ratio=1)
    restored = RolloutCallback(async_ratio=1)
    restored.load_state_dict(callback.state_dict())  # before setup, as Lightning restores a checkpoint
    restored.setup(trainer, module, "fit")
    assert restored.sampler.state_dict() == callback.sampler.state_dict()


@pytest.mark.parametrize(
    "settings, named",
    [
        (dict(async_ratio=-1), "rollout.async_ratio must be a number >= 0"),
        (dict(async_ratio="two"), "rollout.async_ratio must be a number >= 0"),
        (dict(async_ratio=1, schedule="queue"), "leave rollout.schedule"),
        (dict(async_ratio=1, engine="hf"), "needs the native engine"),
        (dict(worker_device="cpu"), "set rollout.async_ratio"),
        (dict(async_ratio=1, workers="fleet"), "rollout.workers 'fleet'"),
        (dict(async_ratio=1, num_workers=0), "rollout.num_workers"),
        (dict(async_ratio=1, ray_address="auto"), "for rollout.workers=ray"),
    ],
)
def test_bad_settings_are_named(settings, named):
    with pytest.raises(ConfigError, match=named):
        RolloutCallback(**settings)
