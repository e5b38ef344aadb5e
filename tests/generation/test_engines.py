"""The hf and vllm rollout engines behind the native engine's interface: the hf engine against the native one
on the same weights; the vllm adapter against a fake ``vllm`` module (and the real one on a GPU with vLLM)."""

import sys
import types
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModelForCausalLM

from zoo.datamodules.prompts import PromptDataModule
from zoo.errors import ConfigError
from zoo.generation.engine import Engine, RequestCore, RequestLevelEngine
from zoo.generation.hf import HFEngine
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.models import GPTNeoX, GPTNeoXConfig, MeSH, MeSHConfig
from zoo.modules.grpo import GRPOModule
from zoo.rollout.callback import RolloutCallback

DIMS = dict(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=96)
PROMPTS = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8], [40, 41]]


def _policy(seed=0):
    torch.manual_seed(seed)
    return GPTNeoX(GPTNeoXConfig(**DIMS, num_hidden_layers=2)).eval()


def _hf_engine(policy):
    engine = HFEngine(policy.config)
    engine.load_weights(policy.named_parameters())
    return engine


def _tokens(result):
    return [s.token_ids for s in result.samples]


def test_every_engine_is_of_the_engine_type_and_the_request_level_ones_hand_out_a_core(fake_vllm):
    """The engine seam is a type: the rollout system tells what an engine can do by it, never by its attributes."""
    from zoo.generation.vllm import VLLMEngine

    policy = _policy()
    native, hf = NativeEngine(policy), _hf_engine(policy)
    vllm = VLLMEngine(policy.config, policy.named_parameters())
    assert all(isinstance(e, Engine) for e in (native, hf, vllm))
    assert isinstance(native, RequestLevelEngine) and isinstance(vllm, RequestLevelEngine)
    assert not isinstance(hf, RequestLevelEngine)  # batch generation only
    for engine in (native, vllm):
        with engine.serving():
            assert isinstance(engine.core(4, 16, 8), RequestCore)


def test_hf_engine_decodes_like_the_native_engine():
    policy = _policy()
    engine, native = _hf_engine(policy), NativeEngine(policy)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    theirs, ours = engine.generate(PROMPTS, 2, greedy), native.generate(PROMPTS, 2, greedy)
    assert _tokens(theirs) == _tokens(ours) and [s.prompt_index for s in theirs.samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    for a, b in zip(theirs.samples, ours.samples, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    stop = ours.samples[0].token_ids[4]
    with_stop = SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(stop,))
    theirs, ours = engine.generate(PROMPTS, 1, with_stop), native.generate(PROMPTS, 1, with_stop)
    assert _tokens(theirs) == _tokens(ours)
    assert [s.finish_reason for s in theirs.samples] == [s.finish_reason for s in ours.samples]
    assert theirs.samples[0].finish_reason == "stop" and theirs.generated_tokens == sum(map(len, _tokens(ours)))


def test_hf_engine_samples_the_tempered_policy_reproducibly():
    policy = _policy(seed=1)
    engine = _hf_engine(policy)
    params = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=20, seed=3)
    state = torch.random.get_rng_state()
    first = engine.generate(PROMPTS, 3, params)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is left alone
    assert _tokens(first) == _tokens(engine.generate(PROMPTS, 3, params))
    assert len({tuple(t) for t in _tokens(first)}) > 4
    for sample in first.samples:
        prompt = PROMPTS[sample.prompt_index]
        with torch.no_grad():
            logits = policy(torch.tensor([prompt + sample.token_ids]))[0, len(prompt) - 1 : -1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(sample.token_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=1e-4, rtol=0)


def test_hf_engine_refuses_what_it_cannot_do():
    engine = _hf_engine(_policy())
    with pytest.raises(ConfigError, match="quota"):
        engine.generate(PROMPTS, 2, SamplingParams(max_new_tokens=4), finished_groups_quota=1)
    mesh = MeSH(MeSHConfig(**DIMS, layout="1+1R2+1"))
    with pytest.raises(ConfigError, match="Pythia.*use native"):
        HFEngine(mesh.config)


# -- vllm, faked ------------------------------------------------------------------------------------------


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Completion:
    token_ids: list
    logprobs: list
    finish_reason: str


@dataclass
class _RequestOutput:
    outputs: list
    request_id: str = ""
    finished: bool = True


class _FakeEngine:
    """vLLM's request-level engine: a request finishes after (the sum of its prompt's tokens % 4) + 1 steps
    with as many tokens of value 1 as the engine has run steps (at most max_tokens), unless aborted first."""

    def __init__(self):
        self.added, self.aborted, self.running, self.steps = [], [], {}, 0

    def add_request(self, request_id, prompt, params):
        self.added.append((request_id, prompt, params))
        self.running[request_id] = [sum(prompt["prompt_token_ids"]) % 4 + 1, params]

    def abort_request(self, request_ids):
        self.aborted += request_ids
        for request_id in request_ids:
            self.running.pop(request_id, None)

    def step(self):
        self.steps += 1
        outputs = []
        for request_id, state in list(self.running.items()):
            state[0] -= 1
            if state[0] == 0:
                length = min(state[1].max_tokens, self.steps)
                tokens, logprobs = [1] * length, [{1: _Logprob(-0.5)}] * length
                outputs.append(_RequestOutput([_Completion(tokens, logprobs, "length")], request_id))
                del self.running[request_id]
        return outputs


class _FakeLLM:
    """Records what the adapter asks of vLLM; completes prompt p's sample j with tokens p+j+1, ... (3 of them,
    the last a stop) and log-prob -(position + 1) / 10."""

    def __init__(self, model, tokenizer, **options):
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.requests, self.sampling, self.workers = None, None, []
        self.llm_engine = _FakeEngine()
        _FakeVLLM.instances.append(self)

    def generate(self, requests, sampling, use_tqdm=True):
        self.requests, self.sampling = requests, sampling
        outputs = []
        for p, _ in enumerate(requests):
            completions = []
            for j in range(sampling.n):
                tokens = [p + j + 1, p + j + 2, 0]
                logprobs = [{t: _Logprob(-(i + 1) / 10)} for i, t in enumerate(tokens)]
                completions.append(_Completion(tokens, logprobs, "stop" if j % 2 == 0 else "length"))
            outputs.append(_RequestOutput(completions))
        return outputs

    def collective_rpc(self, method, args=()):
        loaded = {}
        model = types.SimpleNamespace(load_weights=lambda weights: loaded.update(weights))
        worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))
        method(worker, *args)
        self.workers.append(loaded)
        return [None]


class _FakeSamplingParams:
    def __init__(self, **fields):
        self.__dict__.update(fields)


class _FakeVLLM(types.ModuleType):
    instances: list = []

    def __init__(self):
        super().__init__("vllm")
        self.LLM, self.SamplingParams = _FakeLLM, _FakeSamplingParams
        self.sampling_params = types.SimpleNamespace(RequestOutputKind=types.SimpleNamespace(FINAL_ONLY="final"))
        _FakeVLLM.instances = []


@pytest.fixture
def fake_vllm(monkeypatch):
    module = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_adapter_starts_generates_and_syncs_through_vllms_api(fake_vllm):
    from zoo.generation.vllm import VLLMEngine

    policy = _policy(seed=2)
    engine = VLLMEngine(policy.config, policy.named_parameters(), gpu_memory_utilization=0.25)
    (llm,) = fake_vllm.instances
    assert llm.options == {"logprobs_mode": "processed_logprobs", "seed": 0, "gpu_memory_utilization": 0.25}
    exported = AutoModelForCausalLM.from_pretrained(llm.model).eval()  # the directory vLLM was given
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, policy(ids), atol=1e-5, rtol=0)

    params = SamplingParams(max_new_tokens=7, temperature=0.8, top_p=0.9, stop_token_ids=(0,), seed=5)
    result = engine.generate(PROMPTS, 2, params)
    assert llm.requests == [{"prompt_token_ids": p} for p in PROMPTS]
    s = llm.sampling
    assert (s.n, s.temperature, s.top_p, s.top_k, s.max_tokens, s.stop_token_ids, s.seed, s.logprobs) == (
        2, 0.8, 0.9, -1, 7, [0], 5, 0,
    )  # fmt: skip
    assert [x.prompt_index for x in result.samples] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert result.samples[3].token_ids == [3, 4, 0] and result.samples[3].logprobs == [-0.1, -0.2, -0.3]
    assert [x.finish_reason for x in result.samples[:2]] == ["stop", "length"]
    assert result.generated_tokens == 24

    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    engine.load_weights(policy.named_parameters())
    (loaded,) = llm.workers
    assert set(loaded) == set(exported.state_dict()) - {"lm_head.weight"} | {"embed_out.weight"}
    torch.testing.assert_close(loaded["gpt_neox.embed_in.weight"], policy.embed.weight)
    with pytest.raises(ConfigError, match="quota"):
        engine.generate(PROMPTS, 2, params, finished_groups_quota=1)
    engine.close()


def test_vllm_adapter_serves_a_hugging_face_policy_under_transformers_names(fake_vllm, hf_models):
    from zoo.generation.vllm import VLLMEngine
    from zoo.models.hf import HFCausalLM, HFConfig

    policy = HFCausalLM(HFConfig(path=str(hf_models["qwen2"]))).eval()
    engine = VLLMEngine(policy.config, policy.named_parameters())
    (llm,) = fake_vllm.instances
    exported = AutoModelForCausalLM.from_pretrained(llm.model).eval()  # the directory vLLM was given
    assert exported.config.model_type == "qwen2" and exported.dtype == torch.float32
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, policy(ids), atol=1e-5, rtol=0)
    engine.load_weights(policy.named_parameters())
    (loaded,) = llm.workers
    assert set(loaded) == {name.removeprefix("hf.") for name, _ in policy.named_parameters()}
    assert "model.embed_tokens.weight" in loaded  # transformers' own names, tied head not repeated
    engine.close()


def test_without_vllm_the_engine_says_how_to_install_it(monkeypatch):
    from zoo.generation.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'zoo\[vllm\]'"):
        VLLMEngine(_policy().config, [])


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_grpo_trains_with_the_engine_and_keeps_its_weights_in_step(engine, fake_vllm, cpu_trainer):
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=200, val_size=8, batch_size=4, vocab_size=64)
    policy = dict(arch="gpt_neox", **{**DIMS, "vocab_size": 64}, num_hidden_layers=2)
    module = GRPOModule(policy, optim=dict(lr=1e-3, warmup_steps=1), rollout=dict(n=2, max_new_tokens=4))
    callback = RolloutCallback(engine=engine)
    trainer = cpu_trainer(max_steps=3, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3 and "reward/mean" in trainer.callback_metrics
    embed = module.model.embed.weight
    if engine == "hf":
        torch.testing.assert_close(callback.engine.model.gpt_neox.embed_in.weight, embed)
    else:
        (llm,) = fake_vllm.instances
        assert len(llm.workers) == 4  # the sync at the start, then after each step
        torch.testing.assert_close(llm.workers[-1]["gpt_neox.embed_in.weight"], embed)


def test_queue_scheduling_drives_vllms_request_level_engine(fake_vllm, cpu_trainer):
    """Every sample its own request (prompt replication), seeded; the surplus of redundant prompts aborted."""
    torch.manual_seed(0)
    data = PromptDataModule(task="arithmetic", train_size=200, val_size=8, batch_size=4, vocab_size=64)
    policy = dict(arch="gpt_neox", **{**DIMS, "vocab_size": 64}, num_hidden_layers=2)
    module = GRPOModule(policy, optim=dict(lr=1e-3, warmup_steps=1), rollout=dict(n=2, max_new_tokens=4))
    callback = RolloutCallback(engine="vllm", schedule="queue", extra_prompts=3)
    trainer = cpu_trainer(max_steps=2, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=data)
    (llm,) = fake_vllm.instances
    engine = llm.llm_engine
    assert len(engine.added) >= 2 * 7 * 2  # 4 + 3 prompts a step, 2 requests each
    assert {params.n for _, _, params in engine.added} == {1}
    assert {params.output_kind for _, _, params in engine.added} == {"final"}
    assert len({params.seed for _, _, params in engine.added}) == len(engine.added)  # a stream per sample
    assert engine.aborted  # redundant prompts' requests that were still running
    assert trainer.callback_metrics["queue/launched_prompts"] == 7


def test_the_hf_engine_refuses_queue_scheduling_in_one_line(cpu_trainer):
    data = PromptDataModule(task="arithmetic", train_size=200, val_size=8, batch_size=4, vocab_size=64)
    policy = dict(arch="gpt_neox", **{**DIMS, "vocab_size": 64}, num_hidden_layers=2)
    module = GRPOModule(policy, rollout=dict(n=2, max_new_tokens=4))
    trainer = cpu_trainer(max_steps=1, limit_val_batches=0, callbacks=[RolloutCallback(engine="hf", schedule="queue")])
    with pytest.raises(ConfigError, match="the hf engine runs batches only"):
        trainer.fit(module, datamodule=data)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_vllm_decodes_like_the_native_engine():
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'zoo[vllm]')")
    from zoo.generation.vllm import VLLMEngine

    torch.manual_seed(0)
    policy = GPTNeoX(GPTNeoXConfig(**{**DIMS, "hidden_size": 256, "intermediate_size": 1024}, num_hidden_layers=2))
    policy = policy.cuda().eval()
    engine = VLLMEngine(policy.config, policy.named_parameters(), dtype=torch.float32, gpu_memory_utilization=0.2)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    assert _tokens(engine.generate(PROMPTS, 1, greedy)) == _tokens(NativeEngine(policy).generate(PROMPTS, 1, greedy))
    other = GPTNeoX(policy.config).cuda().eval()
    engine.load_weights(other.named_parameters())
    assert _tokens(engine.generate(PROMPTS, 1, greedy)) == _tokens(NativeEngine(other).generate(PROMPTS, 1, greedy))
