"""AsyPPO (modules/asyppo.py) from the algebra: one critic and no masks is PPO, step for step; identical critics and
no masks update the policy as PPO does; warm-up steps leave the policy alone; the critics' own learning rate; a
reward that rises with two small critics; and the command line."""

import json

import lightning as L
import pytest
import torch

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.modules.asyppo import AsyPPOModule
from zoo.modules.ppo import PPOModule
from zoo.rollout.callback import RolloutCallback

POLICY = dict(arch="gpt_neox", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip
SMALL_CRITIC = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
OFF = dict(advantage_mask=0.0, entropy_filter=0.0)


class _Start(L.Callback):
    def on_train_start(self, trainer, module):
        self.policy = [p.detach().clone() for p in module.model.parameters()]
        self.critics = [p.detach().clone() for p in module.critics.parameters()]


def _fit(cpu_trainer, module_class, steps=4, reward=None, lr=1e-3, callbacks=(), policy=POLICY, **settings):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=200, val_size=8, batch_size=4, vocab_size=64)
    data.prepare_data()
    data.reward = reward or (lambda p, c, r: float(c.strip().startswith("1")))
    optim = dict(lr=lr, warmup_steps=1, grad_clip=None)
    module = module_class(policy, optim=optim, rollout=dict(n=4, max_new_tokens=5), **settings)
    trainer = cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=[RolloutCallback(), *callbacks])
    torch.manual_seed(1)
    trainer.fit(module, datamodule=data)
    return module, trainer


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("algorithm", [{}, {"ppo_epochs": 2, "minibatch_size": 8, "entropy_coef": 0.01}])
def test_one_critic_without_masks_is_ppo(cpu_trainer, algorithm):
    ppo, _ = _fit(cpu_trainer, PPOModule, algorithm=algorithm)
    asyppo, trainer = _fit(
        cpu_trainer, AsyPPOModule, algorithm=algorithm, asyppo=dict(critics=1, critic_model=None, **OFF)
    )
    _assert_same(ppo.model, asyppo.model)
    _assert_same(ppo.critic, asyppo.critics[0])
    assert trainer.callback_metrics["asyppo/sigma_mean"] == 0


def test_identical_critics_without_masks_move_the_policy_as_ppo(cpu_trainer):
    """Both critics start as copies of the policy: σ = 0 and V̄ = V, so the first update of the policy is PPO's
    (the critics then learn on different shards)."""
    ppo, _ = _fit(cpu_trainer, PPOModule, steps=1)
    asyppo, trainer = _fit(cpu_trainer, AsyPPOModule, steps=1, asyppo=dict(critics=2, critic_model=None, **OFF))
    _assert_same(ppo.model, asyppo.model)
    assert trainer.callback_metrics["asyppo/sigma_mean"] == 0


def test_warmup_trains_the_critics_alone_at_their_own_rate(cpu_trainer):
    start = _Start()
    settings = dict(critic_model=SMALL_CRITIC, critic_warmup_steps=2, critic_lr=5e-3)
    module, trainer = _fit(cpu_trainer, AsyPPOModule, steps=2, callbacks=[start], asyppo=settings)
    for a, b in zip(start.policy, module.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the policy did not move during the warm-up
    assert any(not torch.equal(a, b) for a, b in zip(start.critics, module.critics.parameters(), strict=True))
    rates = sorted({group["initial_lr"] for group in trainer.optimizers[0].param_groups})
    assert rates == [1e-3, 5e-3]
    assert all(critic.body.config.hidden_size == 16 for critic in module.critics)
    assert "critic/value_loss_0" in trainer.callback_metrics and "critic/value_loss_1" in trainer.callback_metrics


def test_ablations_share_the_data_or_mask_at_random(cpu_trainer):
    """``shared``: every critic sees every sample (copies of one policy then stay identical: σ = 0); ``random``:
    the same masked fractions without σ."""
    shared, trainer = _fit(cpu_trainer, AsyPPOModule, asyppo=dict(critic_model=None, shard_mode="shared", **OFF))
    _assert_same(shared.critics[0], shared.critics[1])
    assert trainer.callback_metrics["asyppo/sigma_mean"] == 0
    _, trainer = _fit(cpu_trainer, AsyPPOModule, asyppo=dict(critic_model=None, mask_kind="random"))
    metrics = trainer.callback_metrics  # σ = 0 here would mask nothing; random masks keep the rates
    assert 0.1 < metrics["asyppo/advantage_masked"] < 0.3 and 0.1 < metrics["asyppo/entropy_filtered"] < 0.3


class _Rewards(L.Callback):
    def __init__(self) -> None:
        self.history = []

    def on_train_batch_end(self, trainer, module, *args):
        self.history.append(float(trainer.callback_metrics["reward/mean"]))


def test_two_small_critics_raise_the_reward(cpu_trainer):
    """The bandit of the GRPO tests: reward 1 when the answer starts with "7", about 1 in 16 samples at first."""
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=2000, val_size=16, batch_size=16, vocab_size=64)
    data.prepare_data()
    data.reward = lambda p, c, r: float(c.strip().startswith("7"))
    module = AsyPPOModule(
        POLICY,
        optim=dict(lr=1e-3, warmup_steps=5, weight_decay=0.0),
        rollout=dict(n=8, max_new_tokens=4),
        asyppo=dict(critic_model=SMALL_CRITIC, critic_lr=3e-3),
    )
    record = _Rewards()
    trainer = cpu_trainer(max_steps=200, limit_val_batches=0, callbacks=[RolloutCallback(), record])
    trainer.fit(module, datamodule=data)
    first, last = sum(record.history[:10]) / 10, sum(record.history[-10:]) / 10
    assert first < 0.1 and last > 0.6  # 0.03 → 0.83 when written (PPO with its one full-size critic: 0.88)
    metrics = trainer.callback_metrics
    assert 0 < metrics["asyppo/advantage_masked"] < 0.5 and 0 < metrics["asyppo/entropy_filtered"] < 0.5
    assert metrics["asyppo/sigma_mean"] > 0 and "policy/entropy" in metrics


@pytest.mark.parametrize(
    "asyppo, message",
    [
        (dict(critics=0), "module.asyppo.critics"),
        (dict(shard_mode="random"), "module.asyppo.shard_mode 'random'"),
        (dict(advantage_mask=1.0), "module.asyppo.advantage_mask must lie in"),
        (dict(critic_lr=0), "module.asyppo.critic_lr"),
        (dict(wobble=1), "unknown module.asyppo setting"),
    ],
)
def test_bad_settings_are_named(asyppo, message):
    with pytest.raises(ConfigError, match=message):
        AsyPPOModule(POLICY, asyppo=asyppo)


def test_asyppo_from_the_command_line(run_zoo, tmp_path):
    run_zoo(
        "fit", "method=asyppo", "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
        "model.intermediate_size=64", "data.vocab_size=64", "data.train_size=200", "data.val_size=8",
        "trainer.max_steps=3", "trainer.limit_val_batches=0", "module.rollout.max_new_tokens=4",
        "trainer.enable_progress_bar=false",
    )  # fmt: skip
    (run,) = (tmp_path / "runs" / "asyppo").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("asyppo/sigma_mean", "asyppo/advantage_masked", "asyppo/entropy_filtered", "critic/value_loss_0",
                "critic/value_loss_1", "policy/entropy"):  # fmt: skip
        assert key in metrics, key


def test_a_critic_can_be_a_hugging_face_backbone(hf_models):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(hf_models["llama"]).vocab_size
    critic_model = dict(arch="hf", path=str(hf_models["llama"]))
    module = AsyPPOModule(dict(POLICY, vocab_size=vocab), asyppo=dict(critics=2, critic_model=critic_model))
    module.configure_model()
    assert all(critic.body.config.arch == "hf" for critic in module.critics)
    values = module.critics[0](torch.randint(0, vocab, (3, 7)))
    assert values.shape == (3, 7) and torch.equal(values, torch.zeros(3, 7))  # a zero head: every value 0 at first
    with pytest.raises(ConfigError, match="vocabulary"):
        AsyPPOModule(dict(POLICY, vocab_size=vocab + 1), asyppo=dict(critic_model=critic_model)).configure_model()


def test_the_module_config_names_every_setting():
    from dataclasses import fields
    from pathlib import Path

    import yaml

    from zoo.modules.asyppo import AsyPPOConfig

    config = yaml.safe_load((Path(__file__).parents[2] / "configs" / "module" / "asyppo.yaml").read_text())
    assert set(config["asyppo"]) == {f.name for f in fields(AsyPPOConfig)}


HF_QUICK = [
    "data.train_size=64", "data.val_size=4", "data.batch_size=2", "module.rollout.n=2",
    "module.rollout.max_new_tokens=4", "trainer.max_steps=1", "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "probes.every_n_steps=0",
]  # fmt: skip


def _variant(source, target, vocab_rows=None, swap_tokens=False):
    """A copy of the HF model directory ``source`` with its embedding padded to ``vocab_rows`` rows, or with two
    tokens of its tokenizer swapped (the same size, another tokenizer)."""
    import shutil

    from transformers import AutoModelForCausalLM

    shutil.copytree(source, target)
    if vocab_rows is not None:
        model = AutoModelForCausalLM.from_pretrained(source)
        model.resize_token_embeddings(vocab_rows)
        model.save_pretrained(target)
    if swap_tokens:
        tokenizer = json.loads((target / "tokenizer.json").read_text())
        vocab = tokenizer["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[100:102]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        (target / "tokenizer.json").write_text(json.dumps(tokenizer))
    return target


def test_the_default_critics_with_a_hugging_face_policy_say_what_to_set(run_zoo, hf_models):
    process = run_zoo("fit", "method=asyppo", f"model.path={hf_models['qwen2']}", "model.impl=hf", *HF_QUICK,
                      check=False)  # fmt: skip
    assert process.returncode != 0 and "Traceback" not in process.stderr
    (line,) = [line for line in process.stderr.splitlines() if "module.asyppo.critic_model" in line]
    assert "hidden_size" in line and "critic_model=null" in line and "+module.asyppo.critic_model={arch: hf" in line


def test_a_same_tokenizer_critic_may_pad_its_embedding_differently(run_zoo, hf_models, tmp_path):
    """The policy's tokenizer is what the critics must read: a critic padded to more rows trains; one whose
    tokenizer maps tokens differently is refused in one line."""
    padded = _variant(hf_models["qwen2"], tmp_path / "padded", vocab_rows=272)
    run_zoo(
        "fit", "method=asyppo", f"model.path={hf_models['qwen2']}", *HF_QUICK, "name=padded",
        "~module.asyppo.critic_model", f"+module.asyppo.critic_model={{arch: hf, path: {padded}}}",
    )  # fmt: skip
    metrics = json.loads(next((tmp_path / "runs" / "padded").iterdir()).joinpath("metrics.json").read_text())
    assert "critic/value_loss_1" in metrics
    other = _variant(hf_models["qwen2"], tmp_path / "other", swap_tokens=True)
    process = run_zoo(
        "fit", "method=asyppo", f"model.path={hf_models['qwen2']}", *HF_QUICK,
        "~module.asyppo.critic_model", f"+module.asyppo.critic_model={{arch: hf, path: {other}}}", check=False,
    )  # fmt: skip
    assert process.returncode != 0 and "Traceback" not in process.stderr
    assert "tokenizer" in process.stderr and "is not the policy's" in process.stderr


def test_a_llama_family_policy_trains_with_two_smaller_critics_of_its_family(cpu_trainer, llama_family_policy):
    """The default narrow critics of a Llama or Qwen3 policy are smaller models of its family, reading its tokens."""
    module, trainer = _fit(cpu_trainer, AsyPPOModule, policy=llama_family_policy,
                           asyppo=dict(critic_model=SMALL_CRITIC))  # fmt: skip
    assert len(module.critics) == 2
    for critic in module.critics:
        assert critic.body.config.arch == "llama" and critic.body.config.hidden_size == 16
        assert critic.body.embed.weight.shape[0] == module.model.embed.weight.shape[0]
    assert torch.isfinite(trainer.callback_metrics["critic/value_loss_1"])
