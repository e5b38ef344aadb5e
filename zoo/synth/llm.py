"""The LLM behind DESIGNER's stages: ``complete(prompts, max_tokens, temperature, seeds) -> texts``, one completion
per prompt, in order, each prompt with its own seed (a stage derives it from the item and the attempt, so a
resumed stage asks exactly what the killed one would have).

- ``native`` (default, offline): a zoo model (``hub:NAME``, a hub entry, a run directory or a ``.ckpt``) through
  zoo's own batched engine (:class:`zoo.generation.native.NativeEngine`), prompts through the tokenizer's chat template
  when it has one; prompts longer than the model's context keep their end.
- ``http``: any OpenAI-compatible server (``vllm serve``, SGLang, TGI, a hosted API) on ``/v1/chat/completions``
  or ``/v1/completions``: at most ``concurrency`` requests in flight, each attempt with a wall-clock deadline of
  ``timeout`` seconds (a server that trickles its answer a byte at a time is cut off there, not kept alive by
  each byte); connection errors, timeouts, HTTP 408/409/429/5xx, bodies cut short and unreadable bodies are
  retried ``retries`` times with exponential backoff (``backoff`` x 2^attempt seconds); other HTTP errors fail at
  once. Every answer is cached on disk by the sha256 of its request (url, model, prompt, settings; not the key),
  written atomically, so a rerun or a resumed stage never pays twice. Standard library only (``urllib``):
  nothing to install.

A request that still fails stops the stage at once with one line naming the url and status; the items already
done are kept, and a rerun continues from there. Requests run on daemon threads: the requests still in flight
when a stage stops (a failure, Ctrl-C) are abandoned and never keep the process alive.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from zoo.errors import ConfigError, ZooError
from zoo.io.files import atomic_file, cache_dir
from zoo.synth import build, device_of

RETRIED_STATUS = {408, 409, 429, 500, 502, 503, 504}


class LLMError(ZooError):
    """A request that failed for good (after its retries)."""


class LLM(Protocol):
    def complete(
        self, prompts: Sequence[str], max_tokens: int, temperature: float, seeds: Sequence[int]
    ) -> list[str]: ...


@dataclass
class NativeSettings:
    model: str = "???"  # hub:NAME, a hub entry, a run directory or a .ckpt
    batch_size: int = 32
    top_p: float = 1.0
    chat_template: str = "auto"  # auto | none
    device: str = "auto"  # auto: cuda when there is one


class NativeLLM:
    def __init__(self, settings: NativeSettings) -> None:
        from zoo.generation import in_place_engine
        from zoo.hub.store import load_model
        from zoo.text.chat import chat_format
        from zoo.text.tokenizer import load_tokenizer

        if settings.model == "???":
            raise ConfigError("llm.model must be set (hub:NAME, a hub entry, a run directory or a .ckpt)")
        try:
            loaded = load_model(settings.model)
        except (FileNotFoundError, OSError) as e:
            raise ConfigError(f"llm.model={settings.model}: cannot be loaded ({e})") from None
        if loaded.tokenizer_dir is None:
            raise ConfigError(f"llm.model={settings.model}: no tokenizer saved with this model")
        device = device_of(settings.device)
        self.model = loaded.model.to(device).eval()
        self.tokenizer = load_tokenizer(loaded.tokenizer_dir)
        self.chat = chat_format(self.tokenizer, settings.chat_template, None)
        self.engine = in_place_engine(self.model, self.tokenizer)
        self.settings = settings
        self.context = getattr(self.model.config, "max_position_embeddings", None)

    def _ids(self, prompt: str, max_tokens: int) -> list[int]:
        ids = (
            self.chat.prompt_ids(prompt) if self.chat else self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )
        if self.context is not None:
            ids = ids[-max(1, self.context - max_tokens - 1) :]
        return ids

    def complete(self, prompts: Sequence[str], max_tokens: int, temperature: float, seeds: Sequence[int]) -> list[str]:
        """Batches of ``batch_size`` prompts; a batch is seeded by its first prompt's seed (the engine derives
        each row's stream from it)."""
        from zoo.generation.sampling import SamplingParams

        stops = self.chat.stop_token_ids if self.chat else (self.tokenizer.eos_token_id,)
        texts = []
        for start in range(0, len(prompts), self.settings.batch_size):
            batch = [self._ids(p, max_tokens) for p in prompts[start : start + self.settings.batch_size]]
            params = SamplingParams(
                max_new_tokens=max_tokens,
                temperature=temperature,
                top_p=self.settings.top_p,
                stop_token_ids=tuple(t for t in stops if t is not None),
                seed=seeds[start],
            )
            result = self.engine.generate(batch, 1, params)
            for sample in result.samples:
                texts.append(self.tokenizer.decode(sample.token_ids, skip_special_tokens=True))
        return texts


@dataclass
class HTTPSettings:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "???"  # the served model's name
    api: str = "chat"  # chat: /chat/completions with one user message | completions: /completions
    api_key_env: str | None = None  # the environment variable holding a bearer token, if the server wants one
    concurrency: int = 8
    retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 120.0  # seconds per request
    cache: str | None = "auto"  # auto: <zoo cache>/llm; null: no cache; or a directory
    extra_body: dict | None = None  # more request fields, e.g. {top_p: 0.95}


class HTTPLLM:
    def __init__(self, settings: HTTPSettings) -> None:
        if settings.model == "???":
            raise ConfigError("llm.model must be set (the served model's name)")
        if settings.api not in ("chat", "completions"):
            raise ConfigError(f"llm.api must be chat or completions, got {settings.api!r}")
        if settings.concurrency < 1 or settings.retries < 0 or settings.timeout <= 0:
            raise ConfigError("llm.concurrency must be >= 1, llm.retries >= 0 and llm.timeout > 0")
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + ("/chat/completions" if settings.api == "chat" else "/completions")
        self.cache = (
            None
            if settings.cache is None
            else Path(cache_dir() / "llm" if settings.cache == "auto" else settings.cache)
        )
        self.requests_sent = 0  # requests that reached the network (not answered from the cache)

    def _body(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> dict:
        body = {"model": self.settings.model, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        if self.settings.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return {**body, **(self.settings.extra_body or {})}

    def _text(self, payload: dict) -> str:
        choice = payload["choices"][0]
        text = choice["message"]["content"] if self.settings.api == "chat" else choice["text"]
        if not isinstance(text, str):
            raise TypeError("the completion is not a string")
        return text

    def _attempt(self, data: bytes, headers: dict) -> bytes:
        """One POST's body, within ``timeout`` seconds of wall-clock time: the exchange runs on a daemon thread,
        abandoned at the deadline (the socket's own timeout only bounds each read)."""
        outcome: dict = {}
        done = threading.Event()

        def exchange() -> None:
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                    outcome["body"] = response.read()
            except BaseException as error:
                outcome["error"] = error
            finally:
                done.set()

        threading.Thread(target=exchange, name="zoo-llm-request", daemon=True).start()
        if not done.wait(self.settings.timeout):
            raise TimeoutError(f"no whole answer within llm.timeout={self.settings.timeout:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["body"]

    def _post(self, body: dict) -> str:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ.get(self.settings.api_key_env, '')}"
        problem = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(self.settings.backoff * 2 ** (attempt - 1))
            self.requests_sent += 1
            try:
                return self._text(json.loads(self._attempt(data, headers)))
            except urllib.error.HTTPError as e:
                detail = " ".join(e.read()[:200].decode(errors="replace").split())  # one line
                problem = f"HTTP {e.code}" + (f" ({detail})" if detail else "")
                if e.code not in RETRIED_STATUS:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                problem = f"no answer ({type(e).__name__}: {getattr(e, 'reason', e)})"  # IncompleteRead: cut short
            except (ValueError, KeyError, IndexError, TypeError) as e:
                problem = f"an unreadable answer ({type(e).__name__}: {e})"
        raise LLMError(f"POST {self.url}: {problem}, after {attempt + 1} attempt(s)")

    def _one(self, body: dict) -> str:
        if self.cache is None:
            return self._post(body)
        key = hashlib.sha256(json.dumps({"url": self.url, **body}, sort_keys=True).encode()).hexdigest()
        path = self.cache / key[:2] / f"{key}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())["text"]
            except (ValueError, KeyError):
                pass  # a damaged entry: ask again
        text = self._post(body)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "w") as f:
            json.dump({"text": text}, f)
        return text

    def complete(self, prompts: Sequence[str], max_tokens: int, temperature: float, seeds: Sequence[int]) -> list[str]:
        """The completions, in order; the first request that fails for good stops the batch at once (queued
        requests are not sent, those in flight are abandoned on their daemon threads)."""
        bodies = [self._body(p, max_tokens, temperature, s) for p, s in zip(prompts, seeds, strict=True)]
        pending: queue.SimpleQueue = queue.SimpleQueue()
        for index in range(len(bodies)):
            pending.put(index)
        answers: queue.SimpleQueue = queue.SimpleQueue()
        stopped = threading.Event()

        def work() -> None:
            while not stopped.is_set():
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    answers.put((index, self._one(bodies[index]), None))
                except BaseException as error:
                    answers.put((index, None, error))

        for _ in range(min(self.settings.concurrency, len(bodies))):
            threading.Thread(target=work, name="zoo-llm", daemon=True).start()
        texts: list[str] = [""] * len(bodies)
        try:
            for _ in bodies:
                index, text, error = answers.get()
                if error is not None:
                    raise error
                texts[index] = text
        finally:
            stopped.set()
        return texts


BACKENDS = {"native": (NativeSettings, NativeLLM), "http": (HTTPSettings, HTTPLLM)}


def build_llm(settings: dict) -> LLM:
    """The LLM of the ``llm:`` section (``backend: native | http`` and its settings)."""
    return build("llm", "backend", "native", BACKENDS, settings)
