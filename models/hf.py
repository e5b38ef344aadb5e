"""Any Hugging Face causal LM as a zoo model (``arch: hf``): the policy, reference, critic body or reader of every
module, trained with transformers' own forward.

:class:`HFCausalLM` wraps an ``AutoModelForCausalLM`` (attribute ``hf``) behind the interface zoo's own models
have (:class:`zoo.models.interface.CausalLM`), which is what the modules, losses, critics and engines depend on:

- ``forward(input_ids, targets=None, position_ids=None, segment_ids=None)``: logits (B, T, V), or the mean
  next-token cross-entropy of ``targets`` (-100 ignored). Packed rows (SFT) carry ``segment_ids`` and
  ``position_ids`` that restart per example: the model gets those positions and a block-diagonal causal mask
  (4D, additive), which every attention implementation but flash-attention's takes as it is; flash-attention
  gets the positions alone and finds the examples from them (its varlen path). Not every architecture finds
  packed examples from positions by itself (OPT does not), so the mask is explicit wherever it can be, and
  before the first packed row :meth:`HFCausalLM.check_packing` verifies on two short examples that packing
  changes no logit (BLOOM's ALiBi and Mamba fail it: ``data.pack=false`` gives them a row per example). The
  explicit mask is full causal within an example: a sliding window (Mistral, Gemma 2) does not cut it, which
  changes nothing while ``data.seq_len`` stays within the window (4096 for the released models);
- ``hidden_states(input_ids, position_ids=None, segment_ids=None)``: the final-normed hidden states (B, T, H), for a
  value head; packed rows (padding-free RL, :mod:`zoo.rl.packing`) as ``forward``'s;
- ``embed`` and ``lm_head``: the input embedding and the output projection (one tensor when tied);
- ``block_class``: the decoder-layer classes (``_no_split_modules``) that FSDP and FSDP2 wrap one by one;
- its parameters are transformers' own under the prefix ``hf.``: what the ``hf`` and ``vllm`` engines load.

``path`` is a local model directory in the HF format or ``ORG/NAME`` already in the local Hugging Face cache
(nothing is downloaded at run time: ``zoo hub pull hf:ORG/NAME`` fetches). A checkpoint of an ``hf`` run
rebuilds the model from ``path`` and then loads the run's weights, so the directory must stay where it was
(or push the run to the hub, which stores a self-contained copy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError, first_line
from zoo.models.attention_maps import show_maps
from zoo.models.gpt_neox import attention_mask

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Decoder-layer classes of every HF model built in this process: FSDP1's wrap policy is made before the model
# exists, so it asks here (``zoo.models.is_block``).
DECODER_LAYER_CLASSES: set[type[nn.Module]] = set()


@dataclass
class HFConfig:
    path: str | None = None  # a model directory in the HF format, or ORG/NAME in the local HF cache
    dtype: str = "float32"  # the weights' dtype: float32 | bfloat16 | float16
    attn_implementation: str | None = None  # None: transformers' choice (sdpa where it can) | sdpa | eager | ...
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward pass

    arch = "hf"

    def __post_init__(self) -> None:
        if not self.path or not isinstance(self.path, str):
            raise ConfigError("model.path is required for an hf model: a model directory or ORG/NAME in the HF cache")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict:
        return {"arch": self.arch, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def resolve_path(path: str, key: str = "model.path") -> Path:
    """The local directory of ``path``: itself, or the snapshot of ``ORG/NAME`` in the local HF cache. ``key``
    names the setting in errors."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{key}={path}: no config.json there (not a Hugging Face model directory)")
        return local
    if local.exists():
        raise ConfigError(f"{key}={path}: not a directory (a Hugging Face model directory holds config.json)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # not a repo id, or not in the cache: both mean the same to the user
        raise ConfigError(
            f"{key}={path}: no such directory, and not in the local Hugging Face cache "
            "(fetch it first: zoo hub pull hf:ORG/NAME)"
        ) from None


def model_type(directory: Path) -> str | None:
    """The ``model_type`` that ``directory/config.json`` names."""
    file = directory / "config.json"
    try:
        return json.loads(file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ConfigError(f"{file}: unreadable ({type(e).__name__}: {e})") from None


def causal_lm_directory(path: str) -> Path:
    """The local directory of ``path`` (:func:`resolve_path`), checked to hold a causal LM transformers can build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    directory = resolve_path(path)
    if (found := model_type(directory)) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"{directory / 'config.json'}: model_type {found!r} is not a causal LM that this transformers version "
            "knows (no AutoModelForCausalLM class for it)"
        )
    return directory


def transformers_config(path: str):
    """The transformers config of the causal LM at ``path``."""
    from transformers import AutoConfig

    directory = causal_lm_directory(path)
    try:
        return AutoConfig.from_pretrained(directory)
    except Exception as e:
        raise ConfigError(f"{directory / 'config.json'}: {type(e).__name__}: {first_line(e)}") from None


def quiet_transformers() -> None:
    """No per-file progress bars from transformers' loading and saving: zoo logs what it loads."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


class HFCausalLM(nn.Module):
    config_class = HFConfig

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.config = config
        quiet_transformers()
        directory = causal_lm_directory(config.path)  # one line for an architecture transformers cannot build
        try:
            self.hf = AutoModelForCausalLM.from_pretrained(
                directory, dtype=DTYPES[config.dtype], attn_implementation=config.attn_implementation
            )
        except Exception as e:  # no weights, corrupt weights, an attention implementation it lacks: name the model
            raise ConfigError(f"model.path={config.path}: {type(e).__name__}: {first_line(e)}") from None
        self.hf.train()  # from_pretrained returns it in eval mode; a zoo model starts in training mode
        if config.gradient_checkpointing:  # transformers >= 5.24 names it activation checkpointing
            if hasattr(self.hf, "activation_checkpointing_enable"):
                self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        DECODER_LAYER_CLASSES.update(self.block_class)
        self.packing_checked = False

    @property
    def block_class(self) -> tuple[type[nn.Module], ...]:
        names = set(self.hf._no_split_modules or ())
        return tuple({type(m) for m in self.hf.modules() if type(m).__name__ in names})

    @property
    def embed(self) -> nn.Module:
        return self.hf.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Module:
        return self.hf.get_output_embeddings()

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if segment_ids is not None and not self.packing_checked:
            self.check_packing()
        mask = self._packing_mask(input_ids, segment_ids)
        outputs = self.hf.base_model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        )
        return outputs.last_hidden_state

    def _packing_mask(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor | None:
        """The additive block-diagonal causal mask (B, 1, T, T) of packed rows (None: plain causal attention, or
        flash-attention, which finds the examples from the positions)."""
        if segment_ids is None or "flash" in str(self.hf.config._attn_implementation):
            return None
        allowed = attention_mask(None, input_ids.shape[1], 0, input_ids.device, segment_ids)
        dtype = self.embed.weight.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )

    def _logits(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, segment_ids: torch.Tensor | None
    ) -> torch.Tensor:
        mask = self._packing_mask(input_ids, segment_ids)
        return self.hf(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits

    @torch.no_grad()
    def check_packing(self) -> None:
        """Once per model, before the first packed row: two examples packed into one row must give the logits each
        gives alone; one line naming ``data.pack=false`` (and RL's ``padding_free=false``) for an architecture where
        they do not (BLOOM's ALiBi needs a padding mask, Mamba has no attention), instead of training on examples
        that see each other."""
        device = self.embed.weight.device
        first, second = torch.arange(3, 10, device=device)[None], torch.arange(11, 16, device=device)[None]
        row = torch.cat([first, second], 1)
        positions = torch.cat([torch.arange(7), torch.arange(5)]).to(device)[None]
        segments = torch.tensor([[0] * 7 + [1] * 5], device=device)
        tolerance = 1e-4 if self.embed.weight.dtype == torch.float32 else 5e-2
        was_training = self.training
        self.eval()
        try:
            packed = self._logits(row, positions, segments).float()
            alone = torch.cat([self._logits(first, None, None), self._logits(second, None, None)], 1).float()
            isolated = bool((packed - alone).abs().max() <= tolerance * max(1.0, float(alone.abs().max())))
        except (RuntimeError, ValueError, TypeError):  # the architecture takes no 4D mask
            isolated = False
        finally:
            self.train(was_training)
        if not isolated:
            raise ConfigError(
                f"model type {self.hf.config.model_type!r} cannot keep examples packed into one row from seeing "
                "each other: use data.pack=false (SFT) or module.algorithm.padding_free=false (RL): one example per row"
            )
        self.packing_checked = True

    @property
    def decoder_layers(self) -> list[nn.Module]:
        """The decoder layers, in the order the forward runs them."""
        return [m for m in self.hf.modules() if isinstance(m, self.block_class)]

    @property
    def num_attention_calls(self) -> int:
        return len(self.decoder_layers)

    def _attention_of(self, layer: int) -> nn.Module:
        children = self.decoder_layers[layer].named_children()
        attention = next((m for _, m in children if type(m).__name__.endswith("Attention")), None)
        if attention is None:
            raise ConfigError(
                f"model type {self.hf.config.model_type!r}: no attention module found in decoder layer {layer} "
                "(attention maps read the child module whose class name ends in Attention)"
            )
        return attention

    def _probed_logits(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, probe) -> torch.Tensor:
        """Logits of the model's own forward, during which the decoder layers in ``probe.layers`` also show their
        maps to ``probe``, computed by :func:`zoo.models.attention_maps.show_maps` from the queries, keys, mask and
        scaling their attention function is given (in chunks of heads when the probe asks): for the pass,
        transformers' attention function of the model's implementation (sdpa, flash, flex) is wrapped, and only
        the probed layers' calls do more than it does. Under eager attention each layer returns its maps itself."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        attentions = {id(self._attention_of(layer)): layer for layer in probe.layers}
        implementation = self.hf.config._attn_implementation
        if implementation not in ALL_ATTENTION_FUNCTIONS:  # eager: each module's own function, which returns maps
            return self._eager_probed_logits(input_ids, position_ids, probe, attentions)
        overridden = implementation in ALL_ATTENTION_FUNCTIONS._local_mapping
        attend = ALL_ATTENTION_FUNCTIONS[implementation]

        def probed(module, query, key, value, attention_mask, *args, **kwargs):
            out = attend(module, query, key, value, attention_mask, *args, **kwargs)
            layer = attentions.get(id(module))
            if layer is not None:
                mask = attention_mask if attention_mask is not None and attention_mask.dim() == 4 else None
                mask = None if mask is None else mask[..., : key.shape[-2]]
                show_maps(probe, layer, query, key, mask, kwargs.get("scaling"))
            return out

        ALL_ATTENTION_FUNCTIONS[implementation] = probed  # other models' calls go through unchanged
        try:
            return self._logits(input_ids, position_ids, None)
        finally:
            if overridden:
                ALL_ATTENTION_FUNCTIONS[implementation] = attend
            else:
                del ALL_ATTENTION_FUNCTIONS[implementation]

    def _eager_probed_logits(self, input_ids, position_ids, probe, attentions: dict[int, int]) -> torch.Tensor:
        """Under eager attention a layer computes its maps itself: the probed layers hand theirs on, in the chunks of
        heads the probe asks for."""

        def keep(module, args, output):
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                raise ConfigError(
                    f"model type {self.hf.config.model_type!r} returns no attention maps from "
                    f"{type(module).__name__} under eager attention"
                )
            maps = output[1]
            step = getattr(probe, "heads_per_map", None) or maps.shape[1]
            for start in range(0, maps.shape[1], step):
                probe.observe(attentions[id(module)], maps[:, start : start + step].float())

        handles = [m.register_forward_hook(keep) for m in self.hf.modules() if id(m) in attentions]
        try:
            return self._logits(input_ids, position_ids, None)
        finally:
            for handle in handles:
                handle.remove()

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        attention_probe=None,
    ) -> torch.Tensor:
        """Logits (B, T, V); given ``targets``, their mean cross-entropy (fp32). ``segment_ids`` (B, T) isolate
        packed examples (see the module docstring). ``attention_probe`` is shown the maps of the decoder layers it
        asks for (:mod:`zoo.models.attention_maps`), through a forward with eager attention."""
        if segment_ids is not None and not self.packing_checked:
            self.check_packing()
        if attention_probe is not None:
            if segment_ids is not None:
                raise ValueError("attention maps are read one unpacked sequence at a time")
            logits = self._probed_logits(input_ids, position_ids, attention_probe)
        else:
            logits = self._logits(input_ids, position_ids, segment_ids)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
