"""The native decoder against a slow full-forward reference, and its stop, sampling and early-stop rules."""

import pytest
import torch

from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams, sample_tokens
from zoo.models import GPTNeoX, GPTNeoXConfig, MeSH, MeSHConfig

DIMS = dict(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=96)


def _model(kind="gpt_neox", seed=0):
    torch.manual_seed(seed)
    if kind == "mesh":
        return MeSH(MeSHConfig(**DIMS, layout="1+1R2+1")).eval()
    return GPTNeoX(GPTNeoXConfig(**DIMS, num_hidden_layers=2)).eval()


def _slow_greedy(model, prompt, steps):
    """Full forward over the whole sequence at every step, one prompt at a time, no cache."""
    tokens, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([tokens]))[0, -1]
            token = int(logits.argmax())
            logprobs.append(torch.log_softmax(logits, -1)[token].item())
            tokens.append(token)
    return tokens[len(prompt) :], logprobs


PROMPTS = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8], [40, 41]]


@pytest.mark.parametrize("decode", ["eager", "static"])
@pytest.mark.parametrize("kind", ["gpt_neox", "mesh"])
def test_greedy_equals_the_slow_reference(kind, decode):
    """``static`` runs the CUDA-graph path's static-buffer steps uncaptured (zoo/decode_graphs.py)."""
    model = _model(kind)
    engine = NativeEngine(model, decode=decode)
    result = engine.generate(PROMPTS, n=2, params=SamplingParams(max_new_tokens=12, temperature=0))
    assert len(result.samples) == 8 and result.unfinished_prompts == []
    for sample in result.samples:
        expected_tokens, expected_logprobs = _slow_greedy(model, PROMPTS[sample.prompt_index], 12)
        assert sample.token_ids == expected_tokens
        assert sample.logprobs == pytest.approx(expected_logprobs, abs=1e-4)
        assert sample.finish_reason == "length"


def test_sampled_logprobs_are_the_tempered_policy_of_the_sampled_tokens():
    model = _model(seed=1)
    params = SamplingParams(max_new_tokens=10, temperature=0.7, top_p=0.9, top_k=20, seed=3)
    result = NativeEngine(model).generate(PROMPTS, n=3, params=params)
    for sample in result.samples:
        sequence = torch.tensor([PROMPTS[sample.prompt_index] + sample.token_ids])
        with torch.no_grad():
            logits = model(sequence)[0, len(PROMPTS[sample.prompt_index]) - 1 : -1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(sample.token_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=1e-4, rtol=0)


def test_a_seed_makes_sampling_reproducible():
    engine = NativeEngine(_model(seed=2))
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    first = [s.token_ids for s in engine.generate(PROMPTS, 4, params).samples]
    assert first == [s.token_ids for s in engine.generate(PROMPTS, 4, params).samples]
    assert len({tuple(t) for t in first}) > 4  # and the samples of a prompt differ


def test_top_k_one_is_greedy_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    tokens, _ = sample_tokens(logits.expand(200, 4), SamplingParams(temperature=1.0, top_k=1), None)
    assert (tokens == 0).all()
    probabilities = torch.softmax(logits, -1)[0]  # 0.665, 0.245, 0.090, 0.0002
    tokens, _ = sample_tokens(logits.expand(2000, 4), SamplingParams(temperature=1.0, top_p=0.8), None)
    assert set(tokens.tolist()) == {0, 1} and probabilities[:2].sum() > 0.8


def test_static_decoding_moves_rows_to_smaller_buckets_as_they_finish():
    model = _model(seed=8)
    prompts = [[i % 50 + 1, (3 * i) % 50 + 1] for i in range(9)]  # 9 rows: bucket 16, then 8, 4, 2, 1
    greedy = NativeEngine(model, decode="eager").generate(prompts, 1, SamplingParams(max_new_tokens=16, temperature=0))
    counts = {}
    for s in greedy.samples:
        for t in s.token_ids:
            counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=counts.get)  # a token most rows emit at different steps
    params = SamplingParams(max_new_tokens=16, temperature=0, stop_token_ids=(stop,))
    eager = NativeEngine(model, decode="eager").generate(prompts, 1, params).samples
    engine = NativeEngine(model, decode="static")
    static = engine.generate(prompts, 1, params).samples
    assert [s.token_ids for s in static] == [s.token_ids for s in eager]
    assert [s.finish_reason for s in static] == [s.finish_reason for s in eager]
    lengths = sorted(len(s.token_ids) for s in eager)
    assert lengths[0] < lengths[-1] and len(engine.pool.steps) > 1  # rows left; smaller buckets were used
    again = engine.generate(prompts, 1, params).samples  # reused buffers carry nothing over
    assert [s.token_ids for s in again] == [s.token_ids for s in eager]


def test_stop_tokens_end_rows_early_and_the_batch_shrinks():
    model = _model(seed=3)
    greedy = NativeEngine(model).generate([[5, 9, 2]], 1, SamplingParams(max_new_tokens=12, temperature=0))
    stop = greedy.samples[0].token_ids[4]
    params = SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=(stop,))
    result = NativeEngine(model).generate([[5, 9, 2], [40, 41]], 1, params)
    first = result.samples[0]
    assert first.finish_reason == "stop" and first.token_ids[-1] == stop
    assert len(first.token_ids) == greedy.samples[0].token_ids.index(stop) + 1
    assert result.generated_tokens == sum(len(s.token_ids) for s in result.samples)


class _CharTokenizer:
    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_stop_strings_are_found_in_the_decoded_tail():
    model = _model(seed=4)
    engine = NativeEngine(model, tokenizer=_CharTokenizer())
    text = _CharTokenizer().decode(
        engine.generate([[1]], 1, SamplingParams(max_new_tokens=10, temperature=0)).samples[0].token_ids
    )
    result = engine.generate([[1]], 1, SamplingParams(max_new_tokens=10, temperature=0, stop_strings=(text[3:5],)))
    sample = result.samples[0]
    assert sample.finish_reason == "stop" and _CharTokenizer().decode(sample.token_ids).endswith(text[3:5])


def test_quota_of_finished_groups_stops_early_and_returns_the_rest():
    model = _model(seed=5)
    greedy = NativeEngine(model).generate(PROMPTS, 1, SamplingParams(max_new_tokens=20, temperature=0))
    stop = greedy.samples[0].token_ids[2]
    first_stop = {s.prompt_index: s.token_ids.index(stop) if stop in s.token_ids else 99 for s in greedy.samples}
    earliest = min(first_stop.values())
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=(stop,))
    result = NativeEngine(model).generate(PROMPTS, 2, params, finished_groups_quota=1)
    finished = {s.prompt_index for s in result.samples}
    assert finished == {p for p, step in first_stop.items() if step == earliest}
    assert len(result.samples) == 2 * len(finished) and all(s.finish_reason == "stop" for s in result.samples)
    assert sorted(result.unfinished_prompts) == [p for p in range(4) if p not in finished]
    assert result.decode_steps == earliest + 1


def test_load_weights_changes_what_it_generates():
    source, target = _model(seed=6), _model(seed=7)
    engine = NativeEngine(target)
    params = SamplingParams(max_new_tokens=6, temperature=0)
    before = engine.generate(PROMPTS, 1, params).samples
    engine.load_weights(source.named_parameters())
    after = engine.generate(PROMPTS, 1, params).samples
    expected = NativeEngine(source).generate(PROMPTS, 1, params).samples
    assert [s.token_ids for s in after] == [s.token_ids for s in expected] != [s.token_ids for s in before]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decoding_equals_eager_decoding():
    torch.backends.cuda.matmul.allow_tf32 = False
    model = _model(seed=9).cuda()
    greedy = NativeEngine(model, decode="eager").generate(PROMPTS, 3, SamplingParams(max_new_tokens=16, temperature=0))
    stop = greedy.samples[0].token_ids[3]
    params = SamplingParams(max_new_tokens=16, temperature=0, stop_token_ids=(stop,))
    eager = NativeEngine(model, decode="eager").generate(PROMPTS, 3, params).samples
    engine = NativeEngine(model, decode="graphs")
    for _ in range(2):  # the second call replays the graphs captured by the first
        graphed = engine.generate(PROMPTS, 3, params).samples
        assert [s.token_ids for s in graphed] == [s.token_ids for s in eager]
        for g, e in zip(graphed, eager, strict=True):
            assert g.logprobs == pytest.approx(e.logprobs, abs=1e-4)


def test_a_group_completes_with_its_first_finishers_and_its_other_rows_are_aborted():
    model = _model(seed=5)
    full = NativeEngine(model).generate(PROMPTS, 4, SamplingParams(max_new_tokens=20, temperature=1.0, seed=4))
    stop = max(range(60), key=lambda t: sum(t in s.token_ids for s in full.samples))  # a common token
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=4, stop_token_ids=(stop,))
    for prompt in PROMPTS:  # each row draws from its own stream: the same tokens until the group completes
        every = NativeEngine(model).generate([prompt], 4, params).samples
        early = NativeEngine(model).generate([prompt], 4, params, group_complete_at=2)
        first = sorted(sorted(range(4), key=lambda j: (len(every[j].token_ids), j))[:2])
        assert [s.token_ids for s in early.samples] == [every[j].token_ids for j in first]
        last = max(len(every[j].token_ids) for j in first)  # the step the group's second finisher ended at
        assert early.decode_steps == last == max(len(s.token_ids) for s in early.samples)
    quota = NativeEngine(model).generate(PROMPTS, 4, params, finished_groups_quota=2, group_complete_at=3)
    returned = sorted({s.prompt_index for s in quota.samples})
    assert len(returned) == 2 and [s.prompt_index for s in quota.samples] == [returned[0]] * 3 + [returned[1]] * 3
    assert all(s.finish_reason in ("stop", "length") for s in quota.samples)
    assert quota.unfinished_prompts == [p for p in range(4) if p not in returned]
    assert quota.generated_tokens < NativeEngine(model).generate(PROMPTS, 4, params).generated_tokens


@pytest.mark.parametrize("budget, reason", [(4, "stop"), (3, "length"), (5, "stop")])
def test_a_stop_token_on_the_last_allowed_step_is_a_stop(budget, reason):
    engine = NativeEngine(_model(seed=1))
    prompt = PROMPTS[1]
    greedy = engine.generate([prompt], 1, SamplingParams(max_new_tokens=8, temperature=0.0)).samples[0].token_ids
    stop = next(t for i, t in enumerate(greedy) if i >= 3 and t not in greedy[:i])  # a token first seen at i >= 3
    first = greedy.index(stop)
    params = SamplingParams(max_new_tokens=first + budget - 3, temperature=0.0, stop_token_ids=(stop,))
    (sample,) = engine.generate([prompt], 1, params).samples
    assert sample.finish_reason == reason  # the hf and vllm engines say "stop" when EOS is the last token too
    assert sample.token_ids == greedy[: min(first + 1, first + budget - 3)]


def test_a_row_draws_from_its_own_stream_whatever_the_other_rows_do():
    """Row p * n + j draws with a hash of (its seed, the step): other rows finishing early (a stop token) or
    prompts appended after it change none of its tokens, where one shared generator would shift its draws."""
    model = _model(seed=2)
    free = SamplingParams(max_new_tokens=12, temperature=1.0, seed=9)
    alone = NativeEngine(model).generate(PROMPTS, 3, free).samples
    stop = alone[4].token_ids[2]  # ends that row (and others) early
    stopped = NativeEngine(model).generate(PROMPTS, 3, SamplingParams(**{**free.__dict__, "stop_token_ids": (stop,)}))
    assert any(len(s.token_ids) < 12 for s in stopped.samples) and any(len(s.token_ids) == 12 for s in stopped.samples)
    for cut, whole in zip(stopped.samples, alone, strict=True):
        expected = whole.token_ids[: whole.token_ids.index(stop) + 1] if stop in whole.token_ids else whole.token_ids
        assert cut.token_ids == expected
    more = NativeEngine(model).generate([*PROMPTS, [3, 3, 3], [9]], 3, free).samples
    assert [s.token_ids for s in more[: len(alone)]] == [s.token_ids for s in alone]


def test_row_streams_are_uniform_and_distinct():
    from zoo.generation.sampling import row_seeds, row_uniforms

    draws = torch.stack([row_uniforms(row_seeds(7, 2000), step) for step in range(50)])  # (steps, rows)
    assert draws.min() >= 0 and draws.max() < 1
    assert abs(draws.mean().item() - 0.5) < 0.005 and abs(draws.std().item() - 12**-0.5) < 0.005
    histogram = torch.histc(draws, bins=10, min=0, max=1) / draws.numel()
    assert (histogram - 0.1).abs().max() < 0.01
    assert abs(torch.corrcoef(torch.stack([draws[:, 0], draws[:, 1]]))[0, 1]) < 0.5  # rows are not copies
    assert torch.corrcoef(torch.stack([draws[:-1].flatten(), draws[1:].flatten()]))[0, 1].abs() < 0.02  # nor steps
    assert not torch.equal(row_uniforms(row_seeds(7, 4), 0), row_uniforms(row_seeds(8, 4), 0))
