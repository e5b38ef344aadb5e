"""Recursive (looped) GPT-NeoX: Prelude → a shared core applied K times → Coda (MeSH paper, arXiv:2510.07739).

The layout is written in the paper's notation ``L_pre+L_core R N_loop+L_coda``: ``4+8R2+4`` is a 4-block
prelude, an 8-block core applied twice, a 4-block coda (24 blocks of compute, 16 of parameters). Blocks are
:class:`zoo.models.gpt_neox.Block`, imported, not copied.

Between core applications the recurrence of the paper's Eq. 1 adds a supplement to the core's output,
``h^(t+1) = f_core(h^(t)) + h_sup^(t)``:

- ``base``: nothing;
- ``residual``: ``h^(t)``;
- ``anchor``: ``h^(0)``, the prelude's output;
- ``anchor_emb`` (the paper's +anchor*): ``h_emb``, the token embeddings.

As in the paper (App. B): token embeddings are multiplied by ``sqrt(hidden_size)`` (``scale_embeddings``),
and the output projections of attention and MLP are initialised with std ``initializer_range / sqrt(2 ·
N_compute)``, N_compute counted in the unrolled graph. A KV cache keeps one entry per block *application*
(prelude blocks, then each loop's core blocks, then the coda), so cached decoding equals the full forward.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.models.gpt_neox import PRESETS as PYTHIA
from zoo.models.gpt_neox import AttentionInputs, Block, GPTNeoX, GPTNeoXConfig, StateTrace

RECURRENCES = ("base", "residual", "anchor", "anchor_emb")
_LAYOUT = re.compile(r"^(\d+)\+(\d+)R(\d+)\+(\d+)$")


@dataclass
class RecursiveConfig(GPTNeoXConfig):
    layout: str = "2+4R2+2"
    recurrence: str = "base"
    scale_embeddings: bool = True
    num_hidden_layers: int = field(default=0, init=False)  # unique blocks: derived from the layout

    arch = "recursive"
    recurrences = RECURRENCES

    def __post_init__(self) -> None:
        match = _LAYOUT.match(self.layout.replace(" ", ""))
        if not match:
            raise ConfigError(f"layout {self.layout!r} is not of the form L_pre+L_coreRN_loop+L_coda, e.g. 4+8R2+4")
        self.prelude_layers, self.core_layers, self.num_loops, self.coda_layers = map(int, match.groups())
        if self.core_layers < 1 or self.num_loops < 1:
            raise ConfigError(f"layout {self.layout!r} needs a core of at least one block, looped at least once")
        if self.recurrence not in self.recurrences:
            raise ConfigError(f"recurrence {self.recurrence!r} is not one of {', '.join(self.recurrences)}")
        self.num_hidden_layers = self.prelude_layers + self.core_layers + self.coda_layers
        super().__post_init__()

    @property
    def num_compute_layers(self) -> int:
        """Blocks in the unrolled forward graph."""
        return self.prelude_layers + self.core_layers * self.num_loops + self.coda_layers


def paper_presets(config_class: type[RecursiveConfig], prefix: str) -> dict[str, RecursiveConfig]:
    """The MeSH paper's recursive layouts on Pythia's dimensions (paper App. B, Table 1)."""
    layouts = {
        "160m": ("pythia-160m", "2+4R2+2"),
        "410m": ("pythia-410m", "4+8R2+4"),
        "410m-r3": ("pythia-410m", "3+6R3+3"),
        "1b": ("pythia-1b", "3+5R2+3"),
        "1.4b": ("pythia-1.4b", "4+8R2+4"),
    }
    presets = {}
    for size, (pythia, layout) in layouts.items():
        fields = {k: v for k, v in PYTHIA[pythia].to_dict().items() if k not in ("arch", "num_hidden_layers")}
        presets[f"{prefix}-{size}"] = config_class(**fields, layout=layout)
    return presets


PRESETS = paper_presets(RecursiveConfig, "recursive")


class RecursiveGPTNeoX(GPTNeoX):
    config_class = RecursiveConfig
    config: RecursiveConfig

    def build_blocks(self, config: RecursiveConfig) -> None:
        self.prelude = nn.ModuleList(Block(config) for _ in range(config.prelude_layers))
        self.core = nn.ModuleList(Block(config) for _ in range(config.core_layers))
        self.coda = nn.ModuleList(Block(config) for _ in range(config.coda_layers))

    @property
    def num_attention_calls(self) -> int:
        return self.config.num_compute_layers

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        return x * math.sqrt(self.config.hidden_size) if self.config.scale_embeddings else x

    def run_stage(self, blocks: nn.ModuleList, x: torch.Tensor, inputs: AttentionInputs, first: int) -> torch.Tensor:
        for j, block in enumerate(blocks):
            x = self.run_block(block, x, inputs, first + j)
        return x

    def core_entry(self, loop: int) -> int:
        """KV-cache entry of the first core block in loop ``loop`` (0-based)."""
        return self.config.prelude_layers + loop * self.config.core_layers

    def body(self, h_emb: torch.Tensor, inputs: AttentionInputs, trace: StateTrace | None = None) -> torch.Tensor:
        c = self.config
        h0 = self.prelude_stage(h_emb, inputs, trace)
        if trace is not None:
            trace.states["h0"] = h0
        h = h0
        for t in range(c.num_loops):
            out = self.run_stage(self.core, h, inputs, self.core_entry(t))
            if trace is not None:
                trace.stage(f"core{t + 1}", h, out)
            # Eq. 1: h^(t+1) = f_core(h^(t)) + h_sup^(t)
            supplement = {"base": None, "residual": h, "anchor": h0, "anchor_emb": h_emb}[c.recurrence]
            h = out if supplement is None else out + supplement
            if trace is not None:
                trace.states[f"h{t + 1}"] = h
        return self.coda_stage(h, inputs, trace)

    def prelude_stage(self, h_emb: torch.Tensor, inputs: AttentionInputs, trace: StateTrace | None) -> torch.Tensor:
        out = self.run_stage(self.prelude, h_emb, inputs, 0)
        if trace is not None:
            trace.states["h_emb"] = h_emb
            trace.stage("prelude", h_emb, out)
        return out

    def coda_stage(self, h: torch.Tensor, inputs: AttentionInputs, trace: StateTrace | None) -> torch.Tensor:
        out = self.run_stage(self.coda, h, inputs, self.core_entry(self.config.num_loops))
        if trace is not None:
            trace.stage("coda", h, out)
            trace.states["h_out"] = out
        return out
