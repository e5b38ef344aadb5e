"""Engine servers (zoo/rollout/workers/engine_server.py) in a thread and in a spawned process: the requests they finish
are what the engine's batch API returns for the same seeds; commands apply in order (aborts, new weights); a failure or
a dead process reaches the driver as one error."""

import time

import pytest
import torch

from zoo.generation.engine import Request
from zoo.generation.native import NativeEngine
from zoo.generation.sampling import SamplingParams, row_seeds
from zoo.models import build_model, config_from_dict
from zoo.rollout.workers.engine_server import EngineSpec, ServerError, process_server, thread_server

CONFIG = config_from_dict(dict(arch="gpt_neox", vocab_size=32, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))  # fmt: skip
PROMPTS = [[3, 4, 5], [7, 8], [9, 10, 11, 12]]
PARAMS = SamplingParams(max_new_tokens=12, temperature=1.0, stop_token_ids=(0,), seed=5)


def _model(seed):
    torch.manual_seed(seed)
    return build_model(CONFIG).eval()


def _spec(model):
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return EngineSpec(CONFIG, weights, None, None, {}, "cpu", max_running=8, max_length=20, max_new_tokens=12)


def _requests(n=2):
    seeds = row_seeds(PARAMS.seed, len(PROMPTS) * n).tolist()
    return [Request(p * n + j, prompt, PARAMS, seeds[p * n + j]) for p, prompt in enumerate(PROMPTS) for j in range(n)]


def _collect(channel, count, timeout=60):
    finished, deadline = {}, time.time() + timeout
    while len(finished) < count:
        assert time.time() < deadline, "the server finished too few requests"
        finished.update({f.id: f for f in channel.receive(0.05)})
    return finished


@pytest.mark.parametrize("where", ["thread", "process"])
def test_a_server_finishes_what_the_batch_api_generates(where):
    model = _model(0)
    expected = NativeEngine(model).generate(PROMPTS, 2, PARAMS).samples
    channel = thread_server(_spec(model)) if where == "thread" else process_server(_spec(model))
    try:
        channel.submit(_requests())
        finished = _collect(channel, 6)
        assert [finished[i].token_ids for i in range(6)] == [s.token_ids for s in expected]
        torch.testing.assert_close(
            torch.tensor([x for i in range(6) for x in finished[i].logprobs]),
            torch.tensor([x for s in expected for x in s.logprobs]),
        )
        assert channel.busy_s > 0
        # new weights apply to what is submitted after them
        other = _model(1)
        channel.load_weights(other.state_dict().items())
        channel.submit(_requests())
        again = _collect(channel, 6)
        expected = NativeEngine(other).generate(PROMPTS, 2, PARAMS).samples
        assert [again[i].token_ids for i in range(6)] == [s.token_ids for s in expected]
    finally:
        channel.stop()


def test_an_aborted_request_comes_back_as_such_and_errors_reach_the_driver():
    channel = thread_server(_spec(_model(0)))
    long = SamplingParams(max_new_tokens=12, temperature=1.0, stop_token_ids=(), seed=1)
    channel.submit([Request("long", [3, 4], long, 7)])
    channel.abort(["long"])
    (aborted,) = _collect(channel, 1).values()
    assert aborted.id == "long" and aborted.finish_reason == "abort" and len(aborted.token_ids) < 12
    channel.submit([Request("too long", list(range(1, 19)), PARAMS, 0)])  # 18 + 12 > 20 columns
    with pytest.raises(ServerError, match="too long.*exceed"):
        _collect(channel, 1, timeout=10)
    channel.stop()


def test_a_dead_server_process_is_named():
    channel = process_server(_spec(_model(0)))
    channel.submit(_requests())
    _collect(channel, 6)
    channel.runner.kill()
    channel.runner.join()
    with pytest.raises(ServerError, match="gone"):
        channel.receive(0.05)


def test_a_server_process_dies_with_its_trainer_even_killed_at_once(zoo_env):
    """The trainer is SIGKILLed a second after its process server starts (while the server still imports torch):
    the server does not outlive it (a leaked one held 470 MB for minutes; on a GPU it would hold device memory)."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_engine_server import _model, _spec\n"
        "from zoo.rollout.workers.engine_server import process_server\n"
        "channel = process_server(_spec(_model(0)))\n"
        "print(channel.runner.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    trainer = subprocess.Popen(
        [sys.executable, "-c", script, os.path.dirname(__file__)], env=zoo_env, stdout=subprocess.PIPE, text=True
    )
    server = int(trainer.stdout.readline())
    time.sleep(1)
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.kill(server, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(server, signal.SIGKILL)
    raise AssertionError("the server process outlived its trainer by a minute")
