"""Hugging Face causal LMs behind zoo's model interface (zoo.models.hf), on tiny random Llama and Qwen2 models
saved by the test: their log-probs equal a direct transformers forward, packed rows equal examples alone, the
hf engine samples the distribution the trainer scores, and a critic stands on their body."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from zoo.errors import ConfigError
from zoo.generation.hf import HFEngine
from zoo.generation.sampling import SamplingParams
from zoo.models import build_model, config_from_dict
from zoo.models.hf import HFCausalLM, HFConfig
from zoo.models.value import ValueModel
from zoo.rl.rollout import token_logprobs

ARCHITECTURES = ["llama", "qwen2", "opt"]


def _policy(hf_models, arch, **settings) -> HFCausalLM:
    return build_model(config_from_dict({"arch": "hf", "path": str(hf_models[arch]), **settings}))


def test_zoo_and_hf_models_share_one_interface(hf_models):
    from zoo.models import CausalLM, GPTNeoX, GPTNeoXConfig, MeSH, MeSHConfig
    from zoo.models.interface import Traceable

    dims = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    for model in (
        GPTNeoX(GPTNeoXConfig(**dims)),
        MeSH(MeSHConfig(**dims, layout="1+1R2+1")),
        _policy(hf_models, "qwen2"),
    ):
        assert isinstance(model, CausalLM), type(model).__name__
        ids = torch.randint(3, 64, (2, 7))
        assert model(ids).shape[:2] == (2, 7) and model.hidden_states(ids).shape[:2] == (2, 7)
        assert model.lm_head.weight.shape[0] >= 64 and model.embed.weight.shape[0] >= 64
        assert isinstance(model, Traceable) == (model.config.arch != "hf")  # zoo's own blocks can be traced


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_log_probs_equal_a_direct_transformers_forward(hf_models, arch):
    policy = _policy(hf_models, arch).eval()
    peer = AutoModelForCausalLM.from_pretrained(hf_models[arch]).eval()
    ids = torch.randint(3, policy.embed.num_embeddings, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, entropy = token_logprobs(policy, ids, temperature=0.7, with_entropy=True)
        logits = peer(ids[:, :-1]).logits.float() / 0.7
    expected = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert entropy.shape == ours.shape and (entropy > 0).all()
    targets = ids[:, 1:].clone()
    targets[:, :5] = -100
    loss = policy(ids[:, :-1], targets=targets)
    reference = torch.nn.functional.cross_entropy(peer(ids[:, :-1]).logits.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_examples_see_only_themselves(hf_models, arch):
    """Segments and positions restarting at 0 isolate packed examples: each one's logits equal those of it alone
    (OPT, which does not find packed examples from positions itself, included)."""
    policy = _policy(hf_models, arch).eval()
    first, second = torch.arange(5, 14)[None], torch.arange(20, 27)[None]
    row = torch.cat([first, second], 1)
    positions = torch.cat([torch.arange(9), torch.arange(7)])[None]
    segments = torch.tensor([[0] * 9 + [1] * 7])
    with torch.no_grad():
        packed = policy(row, position_ids=positions, segment_ids=segments)
        torch.testing.assert_close(packed[:, :9], policy(first), atol=1e-5, rtol=0)
        torch.testing.assert_close(packed[:, 9:], policy(second), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hf_engine_samples_what_the_trainer_scores(hf_models, arch, tmp_path):
    """The engine's copy, filled by load_weights from the policy's zoo names, samples from the tempered policy:
    the log-probs it returns equal the trainer's on the same tokens, and the checkpoint's own generation
    settings (a repetition penalty, top-k) do not leak into the draw."""
    policy = _policy(hf_models, arch)
    with torch.no_grad():
        for p in policy.parameters():  # weights the saved directory does not hold: they must come by sync
            p.add_(0.01 * torch.randn_like(p))
    engine = HFEngine(policy.config)
    engine.load_weights(policy.named_parameters())
    engine.model.generation_config.repetition_penalty = 5.0
    engine.model.generation_config.top_k = 2
    prompts = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6]]
    params = SamplingParams(max_new_tokens=8, temperature=0.8, seed=1)
    result = engine.generate(prompts, 3, params)
    assert [s.prompt_index for s in result.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert engine.model.generation_config.repetition_penalty == 5.0  # the model's own settings are restored
    policy.eval()
    for sample in result.samples:
        prompt = prompts[sample.prompt_index]
        ids = torch.tensor([prompt + sample.token_ids])
        with torch.no_grad():
            trainer = token_logprobs(policy, ids, temperature=0.8)[0][0, len(prompt) - 1 :]
        torch.testing.assert_close(torch.tensor(sample.logprobs), trainer, atol=1e-4, rtol=0)
    greedy = engine.generate(prompts, 1, SamplingParams(max_new_tokens=6, temperature=0))
    for sample in greedy.samples:
        ids = list(prompts[sample.prompt_index])
        for token in sample.token_ids:  # greedy means the argmax at every step, no penalty applied
            with torch.no_grad():
                assert policy(torch.tensor([ids]))[0, -1].argmax().item() == token
            ids.append(token)


def test_a_critic_on_a_tied_hf_body_trains_its_embedding(hf_models):
    policy = _policy(hf_models, "qwen2")
    assert policy.embed.weight is policy.lm_head.weight  # Qwen2's small models tie them
    critic = ValueModel.from_policy(policy)
    assert critic.body.embed.weight.requires_grad  # the tied head is the embedding: not frozen
    ids = torch.randint(3, 90, (2, 11))
    values = critic(ids)
    assert values.shape == (2, 11)
    values.sum().backward()
    assert critic.body.embed.weight.grad is not None and critic.head.weight.grad is not None
    untied = ValueModel.from_policy(_policy(hf_models, "llama"))
    assert not untied.body.lm_head.weight.requires_grad and untied.body.embed.weight.requires_grad


def test_settings_dtype_and_checkpointing(hf_models):
    policy = _policy(hf_models, "llama", dtype="bfloat16", attn_implementation="eager", gradient_checkpointing=True)
    assert {p.dtype for p in policy.parameters()} == {torch.bfloat16}
    assert policy.hf.config._attn_implementation == "eager"
    assert any(getattr(m, "gradient_checkpointing", False) for m in policy.hf.modules())
    assert policy.training  # as a zoo model starts: a trainer's module in training mode
    loss = policy(torch.randint(3, 90, (2, 9)), targets=torch.randint(3, 90, (2, 9)))
    loss.backward()
    assert loss.dtype == torch.float32 and policy.embed.weight.grad is not None


def test_bad_paths_and_architectures_fail_in_one_line(hf_models, tmp_path):
    with pytest.raises(ConfigError, match="model.path is required"):
        HFConfig()
    with pytest.raises(ConfigError, match="model.dtype must be one of"):
        HFConfig(path="x", dtype="int8")
    with pytest.raises(ConfigError, match=r"model.path=/no/such/model: no such directory, and not in the local"):
        HFCausalLM(HFConfig(path="/no/such/model"))
    with pytest.raises(ConfigError, match="no config.json there"):
        HFCausalLM(HFConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ConfigError, match="model_type 'vit' is not a causal LM"):
        HFCausalLM(HFConfig(path=str(tmp_path)))
    with pytest.raises(ConfigError, match="attn_implementation"):
        HFCausalLM(HFConfig(path=str(hf_models["llama"]), attn_implementation="no-such-kernel"))


def test_the_engine_copy_takes_the_dtype_it_is_given_not_the_checkpoints(hf_models, tmp_path):
    """Qwen's config.json says bfloat16: an engine in that dtype would sample from another distribution than
    the float32 policy scores, so the copy is float32 unless asked otherwise (the rollout callback passes the
    policy's dtype, or rollout.dtype)."""
    import shutil

    copy = tmp_path / "bf16-config"
    shutil.copytree(hf_models["qwen2"], copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16", "torch_dtype": "bfloat16"}))
    policy = HFConfig(path=str(copy))
    assert {p.dtype for p in HFEngine(policy).model.parameters()} == {torch.float32}
    assert {p.dtype for p in HFEngine(policy, dtype=torch.bfloat16).model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in HFCausalLM(policy).parameters()} == {torch.float32}  # model.dtype's default


def test_a_model_in_the_local_hugging_face_cache_is_found_by_its_name(hf_models, tmp_path, monkeypatch):
    """``model.path=ORG/NAME`` reads the snapshot the hub cache holds (its own layout: refs/main names the
    snapshot), offline; a name the cache lacks is one line."""
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "models--zoo-tests--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(hf_models["llama"], snapshot)
    (tmp_path / "models--zoo-tests--tiny-llama" / "refs").mkdir()
    (tmp_path / "models--zoo-tests--tiny-llama" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    policy = _policy(hf_models, "llama").eval()
    cached = build_model(config_from_dict({"arch": "hf", "path": "zoo-tests/tiny-llama"})).eval()
    ids = torch.randint(3, 90, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(cached(ids), policy(ids))
    with pytest.raises(ConfigError, match="zoo-tests/absent: no such directory, and not in the local Hugging Face"):
        build_model(config_from_dict({"arch": "hf", "path": "zoo-tests/absent"}))


def test_an_architecture_that_cannot_isolate_packed_examples_says_so_and_trains_unpacked(tiny_hf_model):
    """BLOOM's ALiBi takes no 4D mask: packed rows end in one line naming data.pack=false, and with it SFT
    trains on rows of one example each."""
    from zoo.datamodules.sft import SFTDataModule
    from zoo.modules.pretrain import causal_lm_loss

    bloom = tiny_hf_model("bloom")
    policy = _policy({"bloom": bloom}, "bloom")
    data = SFTDataModule(tokenizer=str(bloom), train_size=16, val_size=4, seq_len=32, batch_size=4)
    data.setup("fit")
    packed = next(iter(data.train_dataloader()))
    with pytest.raises(ConfigError, match="model type 'bloom' cannot keep examples packed .* use data.pack=false"):
        causal_lm_loss(policy, packed)
    unpacked = SFTDataModule(tokenizer=str(bloom), train_size=16, val_size=4, seq_len=32, batch_size=4, pack=False)
    unpacked.setup("fit")
    rows = unpacked.train_set.rows
    assert len(rows) == 16 and set(rows[0]) == {"input_ids", "targets"}  # one example per row, no segments
    batch = next(iter(unpacked.train_dataloader()))
    loss = causal_lm_loss(policy, batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_corrupt_weights_are_one_line_naming_the_model(hf_models, tmp_path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(hf_models["llama"], corrupt)
    (corrupt / "model.safetensors").write_bytes((corrupt / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ConfigError, match=rf"model.path={corrupt}: SafetensorError"):
        _policy({"corrupt": corrupt}, "corrupt")
