"""LoRA and QLoRA through PEFT (zoo.training.lora): the adapted network, its merged weights, the engines' view of it,
checkpoints that hold the adapters only and resume exactly, and adapter entries in the hub that merge and export to
transformers with the same logits. A killed LoRA, QLoRA and quantized-reference GRPO run resumes exactly:
tests/zoo/test_resume.py."""

import json
import shutil

import pytest
import torch

from zoo.errors import ConfigError
from zoo.hub.store import Hub, load_model
from zoo.io.files import sha256_file
from zoo.models import GPTNeoXConfig, LlamaConfig, MeSHConfig, build_model
from zoo.training.lora import adapters_disabled, apply_lora, lora_layers, lora_settings, merge_adapters, merged_weights

pytest.importorskip("peft")

CONFIG = GPTNeoXConfig(
    vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
)


def _adapted(config=CONFIG, seed: int = 0, **settings):
    """A model with adapters whose B is not zero (as after training), and the model it was made from."""
    torch.manual_seed(seed)
    base = build_model(config).eval()
    model = build_model(config).eval()
    model.load_state_dict(base.state_dict())
    apply_lora(model, lora_settings({"r": 4, "alpha": 8, **settings}))
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    return model, base


def test_fresh_adapters_change_nothing_and_only_they_train():
    torch.manual_seed(0)
    model = build_model(CONFIG)
    x = torch.randint(0, 128, (2, 9))
    before = model(x)
    apply_lora(model, lora_settings({"r": 4, "alpha": 8}))
    assert torch.equal(model(x), before)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    # every linear of the blocks: qkv (64 -> 192), attention proj (64 -> 64), fc (64 -> 256), MLP proj (256 -> 64)
    per_block = 4 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    assert sum(model.get_parameter(n).numel() for n in trainable) == 2 * per_block


def test_the_adapted_model_trains_its_adapters_and_its_loss_falls():
    model, base = _adapted()
    model.train()
    x = torch.randint(0, 128, (4, 17), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]  # 64 random tokens through rank-4 adapters, the head frozen
    for name, tensor in base.state_dict().items():  # the base is untouched
        key = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        frozen = model.state_dict().get(name, model.state_dict().get(key))
        assert torch.equal(frozen, tensor), name


@pytest.mark.parametrize(
    "config",
    [CONFIG, MeSHConfig(vocab_size=96, hidden_size=64, layout="1+1R2+1", num_attention_heads=4, intermediate_size=128)],
)
def test_merged_weights_compute_what_the_adapted_model_computes(config):
    model, base = _adapted(config)
    plain = build_model(config).eval()
    plain.load_state_dict(dict(merged_weights(model)))
    x = torch.randint(0, config.vocab_size, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=1e-5)
        with adapters_disabled(model):
            torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
        assert (model(x) - base(x)).abs().max() > 1e-2  # the adapters are back on


def test_merge_adapters_is_w_plus_scaled_b_a():
    a, b, w = torch.randn(2, 5), torch.randn(3, 2), torch.randn(3, 5)
    merged = merge_adapters(
        {"m.weight": w, "m.bias": torch.zeros(3)}, {"m.lora_A.weight": a, "m.lora_B.weight": b}, 2.5
    )
    torch.testing.assert_close(merged["m.weight"], w + 2.5 * b @ a)
    assert torch.equal(merged["m.bias"], torch.zeros(3))


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_qlora_holds_the_base_quantized_and_merges_within_its_tolerance(bits):
    pytest.importorskip("bitsandbytes")
    model, base = _adapted(quantize=bits)
    kinds = {type(layer.get_base_layer()).__name__ for layer in lora_layers(model).values()}
    assert kinds == {"Linear8bitLt" if bits == "8bit" else "Linear4bit"}
    plain = build_model(CONFIG).eval()
    plain.load_state_dict(dict(merged_weights(model)))
    x = torch.randint(0, 128, (3, 11))
    model.train()  # the training kernels (the eval ones also quantize the activations)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=1e-3)


def test_only_the_block_linears_may_be_targeted():
    model = build_model(CONFIG)
    apply_lora(model, lora_settings({"r": 2, "target_modules": ["qkv"]}))
    assert sorted(lora_layers(model)) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    with pytest.raises(ConfigError, match="model.lora.target_modules: 'lm_head' names no linear layer inside"):
        apply_lora(build_model(CONFIG), lora_settings({"r": 2, "target_modules": ["lm_head"]}))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"r": 4, "rank": 8}, "unknown"),
        ({"r": -1}, "model.lora.r must be an integer >= 0"),
        ({"r": 4, "alpha": 0}, "model.lora.alpha must be a number > 0"),
        ({"r": 4, "dropout": 1.0}, r"model.lora.dropout must lie in \[0, 1\)"),
        ({"r": 4, "quantize": "2bit"}, "model.lora.quantize must be null or one of 8bit, 4bit"),
        ({"r": 0, "quantize": "4bit"}, "needs adapters to train"),
        (5, "model.lora must be a mapping such as"),
    ],
)
def test_bad_lora_settings_are_one_line_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        lora_settings(values)


def test_r_zero_means_no_adapters():
    assert lora_settings({"r": 0, "alpha": 16, "dropout": 0.0, "target_modules": None, "quantize": None}) is None


# -- the command line: SFT and GRPO with adapters, the hub, the engines -------------------------------------------

SFT = [
    "method=sft",
    "model.init_from=hub:arithmetic-sft",
    "model.lora.r=8",
    "data.train_size=200",
    "data.val_size=8",
    "data.seq_len=64",
    "module.evaluation.max_new_tokens=6",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def _run_dir(root):
    (hydra,) = list(root.rglob(".hydra"))
    return hydra.parent


def test_lora_sft_pushes_an_adapter_entry_that_merges_and_exports_with_the_same_logits(run_zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    run_zoo("fit", *SFT, "trainer.max_steps=12", "trainer.val_check_interval=12", "name=lora")
    run = _run_dir(tmp_path / "runs" / "lora")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all(".lora_" in k for k in checkpoint["state_dict"])  # the base is rebuilt
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model/trainable_parameters"] < 0.1 * metrics["model/parameters"]

    run_zoo("hub", "push", str(run), "--name", "arith-lora")
    hub = Hub()
    entry = hub.entry("arith-lora")
    base = hub.entry("arithmetic-sft")
    assert entry.adapter["base"] == "hub:arithmetic-sft" and entry.adapter["r"] == 8
    assert "gpt_neox + LoRA on hub:arithmetic-sft" in run_zoo("hub", "list").stdout
    assert entry.adapter["base_manifest_sha256"] == sha256_file(base.path / "manifest.json")
    assert not (entry.path / "model.safetensors").exists()
    assert (entry.path / "adapter.safetensors").stat().st_size < 0.25 * (base.path / "model.safetensors").stat().st_size

    run_zoo("hub", "merge", "arith-lora", "--name", "arith-merged")
    run_zoo("hub", "export", "arith-merged", str(tmp_path / "hf"))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    trained = load_model(str(run)).model.eval()
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        logits = trained(x)
        torch.testing.assert_close(exported(x).logits, logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(load_model("hub:arith-lora").model(x), logits, rtol=0, atol=1e-5)
        assert (load_model("hub:arithmetic-sft").model(x) - logits).abs().max() > 1e-3  # it did learn


def test_an_adapter_entry_refuses_a_base_that_changed(run_zoo, tmp_path):
    from zoo.hub.store import HubError

    run_zoo("hub", "pull", str(Hub().entry("pythia-tiny").path), "--name", "my-base")
    run_zoo(
        "fit", *SFT, "model.init_from=hub:my-base", "trainer.max_steps=2", "trainer.val_check_interval=2", "name=lora"
    )
    run_zoo("hub", "push", str(_run_dir(tmp_path / "runs" / "lora")), "--name", "my-lora")
    shown = run_zoo("hub", "show", "my-lora").stdout
    assert "verified: its base hub:my-base is the entry the adapters were trained on" in shown
    run_zoo("hub", "pull", str(Hub().entry("mesh-tiny").path), "--name", "my-base", "--force")  # replaced
    with pytest.raises(HubError, match="its base hub:my-base has changed since the adapters were trained"):
        Hub().entry("my-lora").state_dict()
    shown = run_zoo("hub", "show", "my-lora", check=False)
    assert shown.returncode != 0 and "verified" not in shown.stdout and "has changed" in shown.stderr
    shutil.rmtree(Hub().entry("my-base").path)  # gone
    shown = run_zoo("hub", "show", "my-lora", check=False)
    assert shown.returncode != 0 and "verified" not in shown.stdout and "no hub entry 'my-base'" in shown.stderr


@pytest.mark.parametrize("field, value", [("r", 0), ("alpha", "x"), ("r", 2.5)])
def test_an_adapter_entry_with_bad_settings_is_refused_in_one_line(run_zoo, tmp_path, field, value):
    """Settings that no merge can use, even in a manifest signed again over them."""
    run_zoo("fit", *SFT, "trainer.max_steps=1", "trainer.val_check_interval=1", "name=lora")
    run_zoo("hub", "push", str(_run_dir(tmp_path / "runs" / "lora")), "--name", "my-lora")
    entry = Hub().entry("my-lora")
    settings = json.loads((entry.path / "adapter.json").read_text())
    (entry.path / "adapter.json").write_text(json.dumps({**settings, field: value}))
    manifest = json.loads((entry.path / "manifest.json").read_text())
    manifest["files"]["adapter.json"] = sha256_file(entry.path / "adapter.json")
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    for command in (["hub", "merge", "my-lora", "--name", "merged"], ["hub", "show", "my-lora"], ["hub", "list"]):
        process = run_zoo(*command, check=False)
        assert "Traceback" not in process.stderr, command
        said = process.stderr if process.returncode else process.stdout
        assert f"adapter.json.{field}" in said.replace("\n", " "), (command, said)


def test_a_lora_run_refuses_a_base_pushed_over_by_another_of_the_same_shape(run_zoo, tmp_path):
    """The run's checkpoints leave the base out and record its fingerprint when training starts: after another
    model of the same shape is pushed over the base's name, resuming, validating, pushing and merging the run all
    stop in one line instead of training or merging on the other weights."""
    from safetensors.torch import load_file, save_file

    from zoo.errors import ZooError

    run_zoo("hub", "pull", str(Hub().entry("pythia-tiny").path), "--name", "my-base")
    run_zoo(
        "fit", *SFT, "model.init_from=hub:my-base", "trainer.max_steps=2", "trainer.val_check_interval=2", "name=lora"
    )
    run = _run_dir(tmp_path / "runs" / "lora")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["rebuilt_from"]["source"] == "hub:my-base"
    run_zoo("hub", "export", "my-base", str(tmp_path / "other"))
    weights = load_file(tmp_path / "other" / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, tmp_path / "other" / "model.safetensors")
    run_zoo("hub", "pull", str(tmp_path / "other"), "--name", "my-base", "--force")  # same shape, other weights
    for command in (
        ["fit", f"resume={run}"],
        ["validate", f"ckpt_path={run}"],
        ["hub", "push", str(run), "--name", "x"],
    ):
        process = run_zoo(*command, check=False)
        assert process.returncode != 0 and "Traceback" not in process.stderr, command
        assert "hub:my-base is not the model this checkpoint was trained from" in process.stderr, command
    with pytest.raises(ZooError, match="not the model this checkpoint was trained from"):
        load_model(str(run))


LLAMA = LlamaConfig(
    vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=128, max_position_embeddings=64, qk_norm=True, tie_word_embeddings=True,
)  # fmt: skip


@pytest.mark.parametrize("config", [CONFIG, LLAMA], ids=["gpt_neox", "qwen3_style_llama"])
def test_the_engine_serves_the_merged_policy(tmp_path, config):
    """The rollout callback's replica, loaded by a sync, computes the LoRA policy's logits."""
    from types import SimpleNamespace

    from zoo.rollout.callback import RolloutCallback

    model, _ = _adapted(config)
    for sync in ("merged", "adapters"):
        callback = RolloutCallback(engine="native", lora_sync=sync)
        module = SimpleNamespace(model=model, device=torch.device("cpu"))
        replica = callback.weight_sync.replica(module)
        assert bool(lora_layers(replica)) == (sync == "adapters")
        with torch.no_grad():
            for layer in lora_layers(replica).values():  # a stale replica: the sync must bring the adapters
                layer.lora_B["default"].weight.zero_()
        params = dict(replica.named_parameters())
        with torch.no_grad():
            for name, tensor in callback.weight_sync.weights(module):
                params[name].copy_(tensor)
        x = torch.randint(0, 128, (2, 10))
        with torch.no_grad():
            torch.testing.assert_close(replica.eval()(x), model(x), rtol=0, atol=1e-5)
        sent = dict(callback.weight_sync.weights(module))
        assert all(".lora_" in k for k in sent) == (sync == "adapters")


def test_adapters_sent_to_another_process_need_a_full_precision_base(run_zoo):
    qlora = ["experiment=arithmetic_grpo_lora", "model.lora.quantize=4bit", "rollout.lora_sync=adapters"]
    process = run_zoo("fit", *qlora, "rollout.async_ratio=0", "rollout.workers=process", check=False)
    assert process.returncode != 0 and "not a QLoRA base (model.lora.quantize)" in process.stderr


def test_qlora_needs_a_trained_model_to_start_from(run_zoo):
    process = run_zoo("fit", "method=sft", "model.lora.r=4", "model.lora.quantize=4bit", check=False)
    assert process.returncode != 0
    assert "model.lora.quantize (QLoRA) needs model.init_from" in process.stderr


def test_a_hugging_face_policy_takes_adapters_and_pushes_merged(run_zoo, hf_models, tmp_path):
    """model.path=DIR with model.lora: GRPO trains the adapters of a tiny Qwen2 on the hf engine, which serves the
    merged weights; the run (not from a hub entry) is pushed merged, and equals the trained model."""
    run_zoo(
        "fit",
        "method=grpo",
        f"model.path={hf_models['qwen2']}",
        "model.impl=hf",
        "model.lora.r=4",
        "module.algorithm.kl_coef=0.05",
        "data.train_size=64",
        "data.val_size=4",
        "data.batch_size=4",
        "module.rollout.n=4",
        "module.rollout.max_new_tokens=6",
        "module.evaluation.max_new_tokens=6",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "name=hf_lora",
    )
    run = _run_dir(tmp_path / "runs" / "hf_lora")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(".lora_A." in k for k in state) and any(".base_layer." in k for k in state)  # base kept: no entry
    run_zoo("hub", "push", str(run), "--name", "qwen-lora")
    entry = Hub().entry("qwen-lora")
    assert entry.is_hf and entry.adapter is None
    x = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(
            load_model("hub:qwen-lora").model.eval()(x), load_model(str(run)).model.eval()(x), rtol=0, atol=1e-5
        )


def test_asynchronous_rollout_with_alpha_0_trains_a_lora_policy_as_the_synchronous_loop_does(run_zoo, tmp_path):
    """α = 0 is the synchronous schedule: a thread worker's replica of a LoRA policy (a fresh plain network, merged
    weights) must hold the policy before the first version, and a process worker keeping the adapters
    (``lora_sync=adapters``: the base sent once, then the adapters alone) must sample what the policy samples."""
    common = [
        "experiment=arithmetic_grpo_lora",
        "data.train_size=128",
        "data.val_size=8",
        "data.batch_size=4",
        "module.rollout.n=4",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.enable_progress_bar=false",
    ]
    run_zoo("fit", *common, "name=sync")
    run_zoo("fit", *common, "rollout.async_ratio=0", "name=thread")
    run_zoo(
        "fit", *common, "rollout.async_ratio=0", "rollout.workers=process", "rollout.lora_sync=adapters", "name=process"
    )
    sync = json.loads((_run_dir(tmp_path / "runs" / "sync") / "metrics.json").read_text())
    for name in ("thread", "process"):
        got = json.loads((_run_dir(tmp_path / "runs" / name) / "metrics.json").read_text())
        for key in ("reward/mean", "val/pass@1"):  # the same samples; a stale replica's rewards differ by 0.1+
            assert got[key] == sync[key], (name, key)
        assert got["train/loss"] == pytest.approx(sync["train/loss"], abs=1e-6), name


@pytest.mark.slow
def test_lora_and_qlora_grpo_reach_the_full_models_result_on_the_rl_demo(run_zoo, tmp_path):
    """docs/rl.md's comparison at seed 1337 (about 70 s): from the shipped SFT policy, full-parameter GRPO, LoRA
    and QLoRA each take held-out greedy accuracy over 70%, the adapters within the seed spread (0.06) of the full
    model or above it."""
    results = {}
    for name, overrides in (
        ("full", ["experiment=arithmetic_grpo"]),
        ("lora", ["experiment=arithmetic_grpo_lora"]),
        ("qlora", ["experiment=arithmetic_grpo_lora", "model.lora.quantize=4bit"]),
    ):
        run_zoo("fit", *overrides, f"name={name}", "trainer.enable_progress_bar=false")
        results[name] = json.loads((_run_dir(tmp_path / "runs" / name) / "metrics.json").read_text())["val/pass@1"]
    assert all(value > 0.7 for value in results.values()), results
    assert results["lora"] >= results["full"] - 0.06 and results["qlora"] >= results["full"] - 0.06, results
