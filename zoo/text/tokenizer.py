"""Tokenizers: an HF tokenizer directory or ``tokenizer.json`` (e.g. Pythia's), or a byte-level BPE that zoo
trains locally with ``tokenizers`` and caches.

The trained tokenizer follows GPT-NeoX's conventions: byte-level BPE, ``<|endoftext|>`` is id 0 (BOS, EOS
and document separator), ``<|padding|>`` id 1. Every tokenizer is returned as a transformers
``PreTrainedTokenizerFast`` so that saving it gives a directory ``AutoTokenizer`` loads.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from zoo.errors import ConfigError
from zoo.io.files import atomic_directory, cache_dir

EOS = "<|endoftext|>"
PAD = "<|padding|>"
_TRAINER_VERSION = "bpe-v1"


def load_tokenizer(source: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load from a ``tokenizer.json`` file, an HF tokenizer directory (local, offline) or ``hub:NAME``."""
    if str(source).startswith("hub:"):
        from zoo.hub.store import Hub

        source = Hub().entry(str(source)[4:]).tokenizer_dir
    path = Path(source).expanduser()
    if path.is_file():
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    elif path.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    else:
        raise FileNotFoundError(f"tokenizer not found: {path} (expected tokenizer.json or a tokenizer folder)")
    return _with_special_tokens(tokenizer)


def _with_special_tokens(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    if tokenizer.eos_token is None and tokenizer.convert_tokens_to_ids(EOS) is not None:
        tokenizer.eos_token = EOS
    if tokenizer.eos_token is None:
        name = getattr(tokenizer, "name_or_path", "") or "given"
        raise ConfigError(
            f"the tokenizer {name} has no EOS token (needed to end documents and completions): give it one "
            "(eos_token in tokenizer_config.json)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD if PAD in tokenizer.get_vocab() else tokenizer.eos_token
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a GPT-NeoX-style byte-level BPE of ``vocab_size`` tokens on ``texts``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=PAD
    )


def cached_bpe(texts: list[str], vocab_size: int, root: Path | None = None) -> PreTrainedTokenizerFast:
    """Train a BPE for exactly these texts and vocab size, or load the one trained before."""
    digest = hashlib.sha256(f"{_TRAINER_VERSION}:{vocab_size}".encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    directory = (root or cache_dir() / "tokenizers") / f"bpe{vocab_size}-{digest.hexdigest()[:16]}"
    if not (directory / "tokenizer.json").is_file():
        tokenizer = train_bpe(texts, vocab_size)
        with atomic_directory(directory) as tmp:
            tokenizer.save_pretrained(str(tmp))
    return load_tokenizer(directory)


def tokenizer_for(spec: str | None, texts: list[str], vocab_size: int, root: Path | None = None):
    """The tokenizer ``spec`` names (file, folder or ``hub:NAME``), or a BPE trained (once) on ``texts``."""
    return load_tokenizer(spec) if spec else cached_bpe(texts, vocab_size, root)
