"""The OpenAI-compatible HTTP backend against a real local server that fails on request."""

import subprocess
import sys
import threading
import time

import pytest

from zoo.errors import ConfigError
from zoo.synth.llm import HTTPLLM, HTTPSettings, LLMError, build_llm
from zoo.synth.teacher import teacher_answer as canned

PROMPT = "Explain it.\n\nThink it through step by step inside <think> and </think>, then give the final answer."


def _llm(server, tmp_path=None, **settings) -> HTTPLLM:
    values = {"base_url": server.url, "model": "canned", "backoff": 0.01, "cache": None, "api": server.api}
    values.update(settings)
    if tmp_path is not None:
        values["cache"] = str(tmp_path / "cache")
    return HTTPLLM(HTTPSettings(**values))


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_completions_come_back_in_prompt_order_with_the_request_settings(api, canned_server):
    prompts = [PROMPT.replace("it", f"item {i}") for i in range(6)]
    with canned_server(api=api) as server:
        texts = _llm(server, api=api).complete(prompts, 32, 0.5, list(range(10, 16)))
    assert texts == [canned(p) for p in prompts]
    body = next(
        b for b in server.bodies if (b.get("messages") or [{}])[0].get("content", b.get("prompt")) == prompts[3]
    )
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == ("canned", 32, 0.5, 13)


def test_server_errors_and_unreadable_bodies_are_retried(canned_server):
    with canned_server(fail_first=2) as server:
        assert _llm(server).complete([PROMPT], 8, 0.0, [0]) == [canned(PROMPT)]
        assert server.requests == 3
    with canned_server(garbage={1}) as server:
        assert _llm(server).complete([PROMPT], 8, 0.0, [0]) == [canned(PROMPT)]
        assert server.requests == 2


def test_a_request_that_keeps_failing_stops_with_one_line_naming_url_and_status(canned_server):
    with canned_server(status=503) as server:
        with pytest.raises(Exception, match=r"POST http://127\.0\.0\.1:\d+/v1/chat/completions: HTTP 503") as e:
            _llm(server, retries=2).complete([PROMPT], 8, 0.0, [0])
        assert server.requests == 3 and "\n" not in str(e.value)


def test_client_errors_are_not_retried(canned_server):
    with canned_server(status=400) as server:
        with pytest.raises(Exception, match="HTTP 400 \\(canned failure\\), after 1 attempt"):
            _llm(server, retries=3).complete([PROMPT], 8, 0.0, [0])
        assert server.requests == 1


def test_a_slow_server_times_out_and_is_retried(canned_server):
    with canned_server(delay=0.5) as server:
        start = time.perf_counter()
        with pytest.raises(Exception, match="no answer"):
            _llm(server, timeout=0.1, retries=1).complete([PROMPT], 8, 0.0, [0])
        assert server.requests == 2 and time.perf_counter() - start < 2


def test_a_server_that_trickles_its_answer_meets_a_wall_clock_deadline(canned_server):
    """A byte every 0.05 s never trips a socket's per-read timeout; llm.timeout is the whole request's."""
    with canned_server(trickle=0.05) as server:
        start = time.perf_counter()
        with pytest.raises(LLMError, match=r"no answer \(TimeoutError: no whole answer within llm.timeout=0.5 s\)"):
            _llm(server, timeout=0.5, retries=1).complete([PROMPT], 8, 0.0, [0])
        assert server.requests == 2 and time.perf_counter() - start < 3


def test_a_body_shorter_than_its_length_is_retried(canned_server):
    with canned_server(short={1}) as server:
        assert _llm(server).complete([PROMPT], 8, 0.0, [0]) == [canned(PROMPT)]
        assert server.requests == 2
    with canned_server(short=set(range(1, 10))) as server:
        with pytest.raises(LLMError, match="IncompleteRead.*after 2 attempt"):
            _llm(server, retries=1).complete([PROMPT], 8, 0.0, [0])


def test_a_failed_request_ends_the_process_at_once_whatever_hangs_beside_it(canned_server, zoo_env):
    """One HTTP 400 among eight requests, the other seven hanging for a minute: the error comes at once and the
    process ends with it; the hanging requests never hold it."""
    with canned_server(status={1: 400}, hang=range(2, 9)) as server:
        script = (
            "import time; from zoo.synth.llm import HTTPLLM, HTTPSettings, LLMError\n"
            f"llm = HTTPLLM(HTTPSettings(base_url={server.url!r}, model='m', cache=None, concurrency=8))\n"
            "start = time.perf_counter()\n"
            "try:\n    llm.complete(['q'] * 8, 8, 0.0, list(range(8)))\n"
            "except LLMError as e:\n    print(round(time.perf_counter() - start, 1), e)\n"
        )
        start = time.perf_counter()
        process = subprocess.run([sys.executable, "-c", script], env=zoo_env, capture_output=True, text=True,
                                 timeout=50)  # fmt: skip
        took = time.perf_counter() - start
    assert "HTTP 400" in process.stdout and float(process.stdout.split()[0]) < 2, process.stdout + process.stderr
    assert took < 15 and process.returncode == 0


def test_at_most_concurrency_requests_are_in_flight(canned_server):
    in_flight, peak, lock = [0], [0], threading.Lock()

    with canned_server(delay=0.1) as server:
        llm = _llm(server, concurrency=3)
        original = llm._post

        def counted(body):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            try:
                return original(body)
            finally:
                with lock:
                    in_flight[0] -= 1

        llm._post = counted
        llm.complete([PROMPT] * 9, 8, 0.0, list(range(9)))
    assert peak[0] == 3


def test_answers_are_cached_per_request(tmp_path, canned_server):
    with canned_server() as server:
        first = _llm(server, tmp_path).complete([PROMPT, PROMPT], 8, 0.0, [1, 2])
        assert server.requests == 2
        again = _llm(server, tmp_path).complete([PROMPT, PROMPT], 8, 0.0, [1, 2])
        assert again == first and server.requests == 2  # nothing asked twice
        _llm(server, tmp_path).complete([PROMPT], 8, 0.0, [3])  # another seed is another request
        assert server.requests == 3


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="llm.model must be set"):
        build_llm({"backend": "http"})
    with pytest.raises(ConfigError, match="unknown llm setting"):
        build_llm({"backend": "http", "model": "m", "temprature": 1})
    with pytest.raises(ConfigError, match="llm.backend must be one of native, http"):
        build_llm({"backend": "openai"})
