"""WIP (issue 13): the request-level engine core with continuous batching: a request's tokens do not depend on
which requests share its steps, a pool smaller than the work refills retired rows, aborts return what was made."""

import pytest
import torch

from zoo.engine_core import EngineCore, Request
from zoo.generation import NativeEngine, SamplingParams, row_seeds
from zoo.models import GPTNeoX, GPTNeoXConfig, MeSH, MeSHConfig

DIMS = dict(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=96)
PROMPTS = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8], [40, 41]]
MANY = [PROMPTS[i % 4] + [i % 7] for i in range(20)]


def _model(kind):
    torch.manual_seed(0)
    if kind == "mesh":
        return MeSH(MeSHConfig(**DIMS, layout="1+1R2+1")).eval()
    return GPTNeoX(GPTNeoXConfig(**DIMS, num_hidden_layers=2)).eval()


def _run(model, prompts, max_running, params, seeds=None):
    core = EngineCore(model, params, max_running=max_running, max_length=40)
    for i, prompt in enumerate(prompts):
        core.submit(Request(i, prompt, int(seeds[i]) if seeds is not None else 0))
    out = {}
    while core.busy:
        out.update({f.id: f for f in core.step()})
    return [out[i] for i in range(len(prompts))], core


@pytest.mark.parametrize("kind", ["gpt_neox", "mesh"])
def test_a_request_decodes_the_same_alone_in_a_busy_pool_and_through_refills(kind):
    model = _model(kind)
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    busy, _ = _run(model, PROMPTS, 8, greedy)
    reference = NativeEngine(model).generate(PROMPTS, 1, greedy).samples
    assert [f.token_ids for f in busy] == [s.token_ids for s in reference]
    for i, prompt in enumerate(PROMPTS):
        assert _run(model, [prompt], 1, greedy)[0][0].token_ids == busy[i].token_ids
    everything, wide = _run(model, MANY, 20, greedy)
    refilled, narrow = _run(model, MANY, 3, greedy)
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
    core = EngineCore(model, SamplingParams(max_new_tokens=8, temperature=0), max_running=2, max_length=40)
    for i, prompt in enumerate(PROMPTS[:3]):
        core.submit(Request(i, prompt, 0))
    core.step()
    core.step()
    aborted = core.abort(0)
    assert aborted.finish_reason == "abort" and len(aborted.token_ids) == 2
    assert core.abort(2).token_ids == []  # still queued
    finished = []
    while core.busy:
        finished += core.step()
    assert [f.id for f in finished] == [1] and len(finished[0].token_ids) == 8
