"""Rollout layout: the trainer's log-probs of the completion tokens equal the engine's, position for position."""

import torch

from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams
from zoo.models import GPTNeoX, GPTNeoXConfig
from zoo.rl.rollout import assemble, token_logprobs


def test_trainer_and_engine_log_probs_agree_on_completion_tokens():
    torch.manual_seed(0)
    model = GPTNeoX(
        GPTNeoXConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).eval()
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11]]
    params = SamplingParams(max_new_tokens=7, temperature=0.8, seed=1, stop_token_ids=(0,))
    result = NativeEngine(model).generate(prompts, 3, params)
    batch = assemble(prompts, result.samples)
    assert batch.response_mask.sum().item() == sum(len(s.token_ids) for s in result.samples)
    with torch.no_grad():
        logprobs, entropy = token_logprobs(model, batch.input_ids, temperature=0.8, with_entropy=True)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], batch.rollout_logprobs[mask], atol=1e-5, rtol=0)
    for row, sample in enumerate(result.samples):
        start = len(prompts[sample.prompt_index]) - 1
        assert batch.targets[row, start : start + len(sample.token_ids)].tolist() == sample.token_ids
    assert (entropy[mask] > 0).all()


def test_minibatches_cover_every_row_once():
    batch = assemble([[1, 2]], [type("S", (), {"prompt_index": 0, "token_ids": [3, 4], "logprobs": [0.0, 0.0]})()] * 5)
    seen = torch.cat([mb.input_ids[:, 0] for mb in batch.minibatches(2, torch.Generator().manual_seed(0))])
    assert len(seen) == 5 and sum(len(mb) for mb in batch.minibatches(2)) == 5
