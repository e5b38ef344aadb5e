"""The request-level engine core (zoo/generation/core.py) with continuous batching: a request's tokens do not depend on
which requests share its steps, a pool smaller than the work refills retired rows, aborts return what was made."""

import pytest
import torch

from zoo.generation.engine import Request
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams, row_seeds
from zoo.models import GPTNeoX, GPTNeoXConfig, MeSH, MeSHConfig

DIMS = dict(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=96)
PROMPTS = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8], [40, 41]]
MANY = [PROMPTS[i % 4] + [i % 7] for i in range(20)]


def _model(kind):
    torch.manual_seed(0)
    if kind == "mesh":
        return MeSH(MeSHConfig(**DIMS, layout="1+1R2+1")).eval()
    return GPTNeoX(GPTNeoXConfig(**DIMS, num_hidden_layers=2)).eval()


def _run(model, prompts, max_running, params, seeds=None, decode="eager"):
    core = NativeEngine(model, decode=decode).core(max_running, 40, params.max_new_tokens)
    for i, prompt in enumerate(prompts):
        core.submit(Request(i, prompt, params, int(seeds[i]) if seeds is not None else 0))
    out = {}
    while core.busy:
        out.update({f.id: f for f in core.step()})
    return [out[i] for i in range(len(prompts))], core


@pytest.mark.parametrize("kind,decode", [("gpt_neox", "eager"), ("mesh", "eager"), ("gpt_neox", "static")])
def test_a_request_decodes_the_same_alone_in_a_busy_pool_and_through_refills(kind, decode):
    """``static``: the CUDA-graph path's static-buffer steps (bucketed, all columns attended), uncaptured."""
    model = _model(kind)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    busy, _ = _run(model, PROMPTS, 8, greedy, decode=decode)
    reference = NativeEngine(model).generate(PROMPTS, 1, greedy).samples
    assert [f.token_ids for f in busy] == [s.token_ids for s in reference]
    for i, prompt in enumerate(PROMPTS):
        assert _run(model, [prompt], 1, greedy, decode=decode)[0][0].token_ids == busy[i].token_ids
    everything, wide = _run(model, MANY, 20, greedy, decode=decode)
    refilled, narrow = _run(model, MANY, 3, greedy, decode=decode)
    assert [f.token_ids for f in refilled] == [f.token_ids for f in everything]
    assert narrow.decode_steps > wide.decode_steps


def test_seeded_sampling_is_the_requests_own_with_stops_and_refills():
    model = _model("gpt_neox")
    params = SamplingParams(max_new_tokens=10, temperature=1.0, stop_token_ids=(5,))
    seeds = row_seeds(3, len(MANY))
    wide, _ = _run(model, MANY, 20, params, seeds)
    narrow, _ = _run(model, MANY, 4, params, seeds)
    assert [f.token_ids for f in narrow] == [f.token_ids for f in wide]
    assert {f.finish_reason for f in wide} == {"stop", "length"}
    assert all(f.token_ids[-1] == 5 for f in wide if f.finish_reason == "stop")


def test_abort_returns_what_was_made_and_frees_the_row():
    model = _model("gpt_neox")
    params = SamplingParams(max_new_tokens=8, temperature=0)
    core = NativeEngine(model).core(2, 40, 8)
    for i, prompt in enumerate(PROMPTS[:3]):
        core.submit(Request(i, prompt, params))
    core.step()
    core.step()
    aborted = core.abort(0)
    assert aborted.finish_reason == "abort" and len(aborted.token_ids) == 2
    assert core.abort(2).token_ids == []  # still queued
    finished = []
    while core.busy:
        finished += core.step()
    assert [f.id for f in finished] == [1] and len(finished[0].token_ids) == 8


def test_requests_with_their_own_params_share_a_pool():
    """Greedy and sampled requests, different stop tokens and budgets, in one pool: each as if alone."""
    model = _model("gpt_neox")
    kinds = [
        SamplingParams(max_new_tokens=6, temperature=0),
        SamplingParams(max_new_tokens=9, temperature=1.0, top_k=5, stop_token_ids=(3,)),
        SamplingParams(max_new_tokens=7, temperature=0.7, top_p=0.8, stop_token_ids=(4, 11)),
    ]
    engine = NativeEngine(model)
    alone = []
    for i, prompt in enumerate(MANY[:9]):
        core = engine.core(1, 40, 9)
        core.submit(Request(i, prompt, kinds[i % 3], seed=100 + i))
        while core.busy:
            alone += core.step()
    core = engine.core(4, 40, 9)
    for i, prompt in enumerate(MANY[:9]):
        core.submit(Request(i, prompt, kinds[i % 3], seed=100 + i))
    shared = []
    while core.busy:
        shared += core.step()
    by_id = {f.id: f for f in shared}
    for f in alone:
        assert by_id[f.id].token_ids == f.token_ids and by_id[f.id].finish_reason == f.finish_reason
        assert len(f.token_ids) <= kinds[f.id % 3].max_new_tokens


def test_bf16_autocast_decoding_follows_the_fp32_model():
    model = _model("gpt_neox")
    params = SamplingParams(max_new_tokens=8, temperature=0)
    fp32 = NativeEngine(model).generate(PROMPTS, 1, params)
    bf16 = NativeEngine(model, dtype=torch.bfloat16).generate(PROMPTS, 1, params)
    assert NativeEngine(model, dtype=torch.bfloat16).pool is None  # built on first use
    pairs = zip(fp32.samples, bf16.samples, strict=True)
    agree = sum(a == b for x, y in pairs for a, b in zip(x.token_ids, y.token_ids, strict=False))
    assert agree >= 0.8 * sum(len(s.token_ids) for s in fp32.samples)
    first = torch.tensor([s.logprobs[0] for s in fp32.samples])
    assert torch.allclose(torch.tensor([s.logprobs[0] for s in bf16.samples]), first, atol=0.1)


def test_a_smaller_core_reuses_the_pool_and_keeps_to_its_rows():
    model = _model("gpt_neox")
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    engine = NativeEngine(model)
    engine.core(8, 30, 12)  # a pool of 8 rows
    pool = engine.pool
    core = engine.core(3, 24, 12)
    assert engine.pool is pool and core.rows == 3
    engine.core(3, 40, 12)  # longer rows: a new pool
    assert engine.pool is not pool
    core = engine.core(3, 40, 12)
    for i, prompt in enumerate(MANY[:7]):
        core.submit(Request(i, prompt, greedy))
    finished = []
    while core.busy:
        finished += core.step()
        assert len(core.running) <= 3
    alone = [_run(model, [prompt], 1, greedy)[0][0].token_ids for prompt in MANY[:7]]
    assert [f.token_ids for f in sorted(finished, key=lambda f: f.id)] == alone
