"""The ``hf`` rollout engine: transformers' ``generate`` on a transformers model that holds the policy's weights:
a Pythia policy (as ``GPTNeoXForCausalLM``) or any Hugging Face policy (``arch: hf``); recursive and MeSH models
have no transformers counterpart: use ``native``.

- ``HFEngine(config, ...)`` builds its own copy of the policy's architecture (:func:`zoo.generation.transformers_view`)
  that ``load_weights`` fills from the policy's zoo-named weights; ``HFEngine.around(model)`` generates with an
  existing transformers model in place (evaluation of an unsharded policy, no copy).
- Prompts are left-padded into one batch; ``num_return_sequences=n`` gives each prompt's n completions in
  prompt order, as the engine interface requires.
- Sampling follows :class:`zoo.generation.sampling.SamplingParams` and nothing else: the model's own
  ``generation_config`` (a checkpoint's repetition penalty, top-k, EOS list) is set aside while it generates, so
  the log-probs the trainer compares against are those of the distribution it sampled from. Temperature 0 is
  greedy; stop tokens go to ``eos_token_id``, stop strings to ``stop_strings``. transformers pads a finished row
  to the batch's length, so each completion is cut where the native engine would have stopped it
  (:func:`zoo.generation.sampling.finish`).
- Log-probs: ``log softmax(logits / temperature)`` of the sampled tokens from the raw logits
  (``output_logits``), before top-k / top-p: the quantity the trainer computes.
- A seed fixes the draw without touching the process's global random state (``torch.random.fork_rng``).
- No early stop on a quota of finished groups: ``generate`` decides when the batch ends (tail batching needs
  ``native`` or ``vllm``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from zoo.errors import ConfigError
from zoo.generation.engine import Engine, GenerationResult, Sample
from zoo.generation.sampling import SamplingParams, finish
from zoo.generation.transformers_view import transformers_view


class HFEngine(Engine):
    def __init__(self, config, tokenizer=None, device=None, dtype: torch.dtype | None = None) -> None:
        from transformers import AutoModelForCausalLM

        architecture, self.rename = transformers_view(config, "hf")
        # the dtype is the caller's (float32 by default), never the one a checkpoint's config.json names
        model = AutoModelForCausalLM.from_config(architecture, dtype=dtype or torch.float32)
        self._serve(model.to(device=device).eval().requires_grad_(False), tokenizer)

    @classmethod
    def around(cls, model, tokenizer=None) -> HFEngine:
        """An engine that generates with ``model`` (a transformers causal LM) itself; weights stay the model's."""
        engine = cls.__new__(cls)
        engine.rename = None
        engine._serve(model, tokenizer)
        return engine

    def _serve(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer
        pad = getattr(tokenizer, "pad_token_id", None)
        eos = model.config.eos_token_id
        self.pad_id = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos) or 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.rename is None:
            raise RuntimeError("an engine serving a model in place shares its weights: nothing to load")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in self.rename(weights).items():
                params["lm_head.weight" if name == "embed_out.weight" else name].copy_(tensor)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        params: SamplingParams,
        finished_groups_quota: int | None = None,
        group_complete_at: int | None = None,
    ) -> GenerationResult:
        if finished_groups_quota is not None or group_complete_at not in (None, n):
            raise ConfigError(
                "the hf engine cannot stop a round early (quota, partial groups): tail batching needs the native "
                "engine, which serves zoo's own models"
            )
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        greedy = params.temperature == 0
        options = dict(
            do_sample=not greedy,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=1 if greedy else n,  # greedy: one completion, repeated n times below
            pad_token_id=self.pad_id,
            eos_token_id=list(params.stop_token_ids) or None,
            output_logits=True,
            return_dict_in_generate=True,
        )
        if not greedy:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.stop_strings:
            options.update(stop_strings=list(params.stop_strings), tokenizer=self.tokenizer)
        from transformers import GenerationConfig

        devices = [self.device] if self.device.type == "cuda" else []
        own, self.model.generation_config = self.model.generation_config, GenerationConfig()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                out = self.model.generate(ids.to(self.device), attention_mask=mask.to(self.device), **options)
        finally:
            self.model.generation_config = own
            self.model.train(was_training)
        new = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1).float()  # (rows, steps, V)
        if not greedy:
            logits = logits / params.temperature
        logprobs = torch.log_softmax(logits, -1).gather(2, new[:, : logits.shape[1], None]).squeeze(2)
        copies = n if greedy else 1
        per_prompt = n // copies
        samples, generated = [], 0
        for row, (tokens, row_logprobs) in enumerate(zip(new.tolist(), logprobs.tolist(), strict=True)):
            kept, reason = finish(self.tokenizer, tokens, params)
            for _ in range(copies):
                samples.append(Sample(row // per_prompt, tokens[:kept], row_logprobs[:kept], reason))
            generated += kept * copies
        return GenerationResult(samples, [], decode_steps=new.shape[1], generated_tokens=generated)
