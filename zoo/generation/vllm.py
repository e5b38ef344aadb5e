"""The ``vllm`` rollout engine (``pip install 'zoo[vllm]'``; imported only when chosen): vLLM's offline
``LLM`` serving the policy's weights, for GPU rollouts at scale. Pythia (gpt_neox) policies and Hugging Face
(``arch: hf``) policies of the architectures vLLM supports; vLLM has no recursive or MeSH model.

- Start: the policy is written as a transformers directory (its architecture's config from
  :func:`zoo.generation.transformers_view`, safetensors weights under transformers' names, the tokenizer) in a
  temporary folder and ``vllm.LLM(model=that folder, ...)`` loads it. ``logprobs_mode`` is
  ``processed_logprobs`` so that the returned log-probs are those of the temperature-scaled distribution, as
  the trainer computes them; other ``LLM`` arguments come from the rollout config's ``engine_options``.
- ``generate``: token-id prompts (``{"prompt_token_ids": ...}``) with one ``SamplingParams(n=...,
  logprobs=0)`` (the sampled token's log-prob); stop strings stay in the output, like the native engine's.
- ``load_weights``: the policy's tensors under transformers' names (the same renaming), handed to every vLLM
  worker through ``LLM.collective_rpc`` with a function that calls the worker model's ``load_weights`` (vLLM's
  documented path for RLHF weight updates). The tensors travel by the RPC's serialisation: simple, and fine for one
  GPU; a multi-GPU deployment would broadcast over NCCL instead.
- No early stop on a quota of finished groups in ``generate`` (``LLM.generate`` runs every request to its end).
- ``core``: queue scheduling's request-level API (submit, abort, step) mapped onto vLLM's own engine
  (``LLM.llm_engine``: ``add_request``, ``abort_request``, ``step``), one single-response request per sample
  (prompt replication) with its own seed; vLLM's scheduler does the continuous batching (its ``max_num_seqs``
  engine option caps the running requests; ``rollout.max_running`` does not apply). vLLM does not report its
  running and waiting requests per step, so the queue's occupancy and waiting figures read 0 with this engine.

Tested here against a fake ``vllm`` module (tests/generation/test_engines.py); the real engine runs only in the
``gpu`` test where vLLM is installed. It has not been run on a GPU by this project yet (docs/rollout.md).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Hashable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from zoo.errors import ConfigError
from zoo.generation.engine import Finished, GenerationResult, Request, RequestCore, RequestLevelEngine, Sample
from zoo.generation.sampling import SamplingParams
from zoo.generation.transformers_view import transformers_view


def _load_into_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker (``collective_rpc`` passes the worker first)."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine(RequestLevelEngine):
    def __init__(
        self,
        config,
        weights: Iterable[tuple[str, torch.Tensor]],
        tokenizer=None,
        dtype: torch.dtype | None = None,
        **llm_options: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as error:
            raise ConfigError(f"rollout engine 'vllm' needs vLLM: pip install 'zoo[vllm]' ({error})") from None
        architecture, self.rename = transformers_view(config, "vllm")
        self.vllm, self.tokenizer = vllm, tokenizer
        self.directory = Path(tempfile.mkdtemp(prefix="zoo-vllm-"))
        architecture.dtype = dtype or torch.float32
        architecture.save_pretrained(self.directory)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.rename(weights).items()}
        save_file(state, self.directory / "model.safetensors", {"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(self.directory)
        options = {"logprobs_mode": "processed_logprobs", "seed": 0, **llm_options}
        self.llm = vllm.LLM(model=str(self.directory), tokenizer=str(self.directory), **options)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc(_load_into_worker, args=(list(self.rename(weights).items()),))

    @contextmanager
    def serving(self):
        yield self

    def core(self, max_running: int, max_length: int, max_new_tokens: int) -> VLLMCore:
        return VLLMCore(self)

    def sampling(self, params: SamplingParams, n: int = 1, seed: int | None = None, final_only: bool = False):
        """vLLM's sampling params for zoo's (the sampled token's log-prob returned with every token)."""
        options = {"output_kind": self.vllm.sampling_params.RequestOutputKind.FINAL_ONLY} if final_only else {}
        return self.vllm.SamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(params.stop_token_ids),
            stop=list(params.stop_strings) or None,
            include_stop_str_in_output=True,
            seed=params.seed if seed is None else seed,
            logprobs=0,
            **options,
        )

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        finished_groups_quota: int | None = None,
        group_complete_at: int | None = None,
    ) -> GenerationResult:
        if finished_groups_quota is not None or group_complete_at not in (None, n):
            raise ConfigError("the vllm engine cannot stop a round early (quota, partial groups) yet: use native")
        sampling = self.sampling(params, n)
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        samples = [
            Sample(index, *_completion(completion))
            for index, request in enumerate(outputs)
            for completion in request.outputs
        ]
        generated = sum(len(s.token_ids) for s in samples)
        steps = max((len(s.token_ids) for s in samples), default=0)
        return GenerationResult(samples, [], decode_steps=steps, generated_tokens=generated)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _completion(completion) -> tuple[list[int], list[float], str]:
    """A vLLM completion's tokens, their log-probs and zoo's finish reason."""
    tokens = list(completion.token_ids)
    logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)]
    return tokens, logprobs, "stop" if completion.finish_reason == "stop" else "length"


class VLLMCore(RequestCore):
    """:class:`zoo.generation.core.EngineCore`'s request-level API on vLLM's engine (``LLM.llm_engine``)."""

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine, self.llm = engine, engine.llm.llm_engine
        self.ids: dict[str, Hashable] = {}  # vLLM's request ids are strings
        self.waiting: list = []  # vLLM keeps its queue to itself
        self.decode_steps = self.prefills = 0
        self.occupancy = 0.0

    @property
    def busy(self) -> bool:
        return bool(self.ids)

    def submit(self, request: Request) -> None:
        key = repr(request.id)
        self.ids[key] = request.id
        sampling = self.engine.sampling(request.params, seed=request.seed, final_only=True)
        self.llm.add_request(key, {"prompt_token_ids": list(request.prompt)}, sampling)

    def abort(self, request_id: Hashable) -> Finished | None:
        key = repr(request_id)
        if key not in self.ids:
            return None
        del self.ids[key]
        self.llm.abort_request([key])
        return Finished(request_id, [], [], "abort")  # vLLM keeps a final-only request's tokens to itself

    def step(self) -> list[Finished]:
        outputs = self.llm.step()
        self.decode_steps += 1
        finished = []
        for output in outputs:
            if output.finished and output.request_id in self.ids:
                request_id = self.ids.pop(output.request_id)
                finished.append(Finished(request_id, *_completion(output.outputs[0])))
        return finished
