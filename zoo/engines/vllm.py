"""The ``vllm`` rollout engine (``pip install 'zoo[vllm]'``; imported only when chosen): vLLM's offline
``LLM`` serving the policy's weights, for GPU rollouts at scale. Pythia (gpt_neox) policies and Hugging Face
(``arch: hf``) policies of the architectures vLLM supports; vLLM has no recursive or MeSH model.

- Start: the policy is written as a transformers directory (its architecture's config from
  :func:`zoo.engines.transformers_view`, safetensors weights under transformers' names, the tokenizer) in a
  temporary folder and ``vllm.LLM(model=that folder, ...)`` loads it. ``logprobs_mode`` is
  ``processed_logprobs`` so that the returned log-probs are those of the temperature-scaled distribution, as
  the trainer computes them; other ``LLM`` arguments come from the rollout config's ``engine_options``.
- ``generate``: token-id prompts (``{"prompt_token_ids": ...}``) with one ``SamplingParams(n=...,
  logprobs=0)`` (the sampled token's log-prob); stop strings stay in the output, like the native engine's.
- ``load_weights``: the policy's tensors under transformers' names (the same renaming), handed to every vLLM
  worker through ``LLM.collective_rpc`` with a function that calls the worker model's ``load_weights`` (vLLM's
  documented path for RLHF weight updates). The tensors travel by the RPC's serialisation: simple, and fine for one
  GPU; a multi-GPU deployment would broadcast over NCCL instead.
- No early stop on a quota of finished groups yet (``LLM.generate`` runs every request to its end).

Tested here against a fake ``vllm`` module (tests/zoo/test_engines.py); the real engine runs only in the
``gpu`` test where vLLM is installed. It has not been run on a GPU by this project yet (README).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from zoo.engines import transformers_view
from zoo.errors import ConfigError
from zoo.generation import GenerationResult, Sample, SamplingParams


def _load_into_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker (``collective_rpc`` passes the worker first)."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
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
        sampling = self.vllm.SamplingParams(
            n=n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(params.stop_token_ids),
            stop=list(params.stop_strings) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
            logprobs=0,
        )
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        samples, generated = [], 0
        for index, request in enumerate(outputs):
            for completion in request.outputs:
                tokens = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)]
                reason = "stop" if completion.finish_reason == "stop" else "length"
                samples.append(Sample(index, tokens, logprobs, reason))
                generated += len(tokens)
        return GenerationResult(
            samples, [], decode_steps=max((len(s.token_ids) for s in samples), default=0), generated_tokens=generated
        )

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
