"""Pretraining text: read documents, tokenize once, pack into fixed-length blocks, cache on disk.

Sources (exactly one; none means the embedded default corpus of :mod:`zoo.text.corpus`):

- ``path``: a ``.txt``/``.md`` file (one document), a ``.jsonl`` file (one document per row, its
  ``text_field``), or a folder of such files (searched recursively, in sorted order);
- ``dataset``: a ``datasets`` dataset by hub name or local path (``load_dataset(dataset, dataset_config,
  split=dataset_split)``), one document per row.

Documents are split into train/val by a seeded hash of their names (``val_fraction`` of them go to val); a
source with a single document is cut at a line break ``val_fraction`` from its end instead. Each split is
tokenized (every document followed by EOS) into one token stream, stored as a flat ``uint16``/``uint32``
array under the cache, keyed by the documents' content, the tokenizer and these settings; a second run
with the same inputs reads the arrays back instead of tokenizing. A training sample is a block of
``seq_len + 1`` consecutive tokens (inputs and shifted targets); blocks do not overlap.

The whole source is held in memory while it is tokenized (fine up to a few GB of text).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.errors import ConfigError, DataError, require_int
from zoo.io.files import atomic_file, cache_dir, read_utf8
from zoo.io.jsonl import read_jsonl
from zoo.text.corpus import Document, embedded_corpus
from zoo.text.loader import ResumableLoader
from zoo.text.tokenizer import tokenizer_for

log = logging.getLogger("zoo")
_FORMAT_VERSION = "text-v1"
_TEXT_SUFFIXES = {".txt", ".md"}


def read_documents(path: str | os.PathLike, text_field: str = "text") -> list[Document]:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.path not found: {root}")
    files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES | {".jsonl"})
    )
    if not files:
        raise DataError(f"no .txt, .md or .jsonl files under {root}")
    documents = []
    for file in files:
        if file.suffix == ".jsonl":
            documents.extend(_jsonl_documents(file, text_field))
        elif file.suffix in _TEXT_SUFFIXES:
            documents.append(Document(str(file), read_utf8(file)))
        else:
            raise DataError(f"{file}: unsupported file type {file.suffix!r} (use .txt, .md or .jsonl)")
    documents = [d for d in documents if d.text.strip()]
    if not documents:
        raise DataError(f"{root}: {'the file is' if root.is_file() else 'its files are'} empty (no text to train on)")
    return documents


def _jsonl_documents(file: Path, text_field: str) -> list[Document]:
    documents = []
    for line_number, row in read_jsonl(file):
        if not isinstance(row.get(text_field), str):
            raise DataError(f"{file}:{line_number}: no string field {text_field!r} in this row")
        documents.append(Document(f"{file}:{line_number}", row[text_field]))
    return documents


def dataset_documents(name: str, config: str | None, split: str, text_field: str) -> list[Document]:
    import datasets

    rows = datasets.load_dataset(name, config, split=split)
    if text_field not in rows.column_names:
        raise DataError(f"dataset {name!r} has no column {text_field!r} (columns: {rows.column_names})")
    return [Document(f"{name}[{i}]", text) for i, text in enumerate(rows[text_field])]


def split_documents(documents: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    if val_fraction <= 0:
        return documents, []
    if len(documents) == 1:
        text = documents[0].text
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction))) + 1 or int(len(text) * (1 - val_fraction))
        return [Document(documents[0].name, text[:cut])], [Document(documents[0].name + ":val", text[cut:])]

    def score(doc: Document) -> float:
        digest = hashlib.sha256(f"{seed}:{doc.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    ranked = sorted(documents, key=score)
    num_val = min(max(1, round(val_fraction * len(documents))), len(documents) - 1)
    val = {id(d) for d in ranked[:num_val]}
    return [d for d in documents if id(d) not in val], [d for d in documents if id(d) in val]


class PackedBlocks(Dataset):
    """Non-overlapping blocks of ``seq_len + 1`` tokens from a flat token array."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = index * self.seq_len
        return torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))


class TextDataModule(L.LightningDataModule):
    def __init__(
        self,
        path: str | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        dataset_split: str = "train",
        text_field: str = "text",
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        seq_len: int = 256,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        seed: int = 1234,
        num_workers: int = 0,
        cache: str | None = None,
    ) -> None:
        super().__init__()
        if path and dataset:
            raise DataError("set data.path or data.dataset, not both")
        require_int("data.seq_len", seq_len, 1)
        require_int("data.batch_size", batch_size, 1)
        require_int("data.num_workers", num_workers, 0)
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {val_fraction!r}")
        self.save_hyperparameters()
        self.cache_root = Path(cache).expanduser() if cache else cache_dir() / "data"
        self.tokenizer = None
        self.arrays: dict[str, Path] = {}

    # -- preparing (idempotent; every rank may call it, writes are atomic) --------------------------------
    def _documents(self) -> list[Document]:
        h = self.hparams
        if h.path:
            return read_documents(h.path, h.text_field)
        if h.dataset:
            return dataset_documents(h.dataset, h.dataset_config, h.dataset_split, h.text_field)
        return embedded_corpus()

    def prepare_data(self) -> None:
        if self.arrays:
            return
        h = self.hparams
        train_docs, val_docs = split_documents(self._documents(), h.val_fraction, h.seed)
        texts = self.tokenizer_texts(train_docs)
        self.tokenizer = tokenizer_for(h.tokenizer, texts, h.vocab_size, self.cache_root.parent / "tokenizers")

        digest = hashlib.sha256(_FORMAT_VERSION.encode())
        digest.update(self.tokenizer.backend_tokenizer.to_str().encode())
        for split, docs in (("train", train_docs), ("val", val_docs)):
            digest.update(f"|{split}:{len(docs)}".encode())
            for doc in docs:
                digest.update(hashlib.sha256(doc.text.encode()).digest())
        directory = self.cache_root / digest.hexdigest()[:24]
        for split, docs in (("train", train_docs), ("val", val_docs)):
            file = directory / f"{split}.bin"
            if not file.is_file():
                self._tokenize_to(file, docs)
            self.arrays[split] = file

    def tokenizer_texts(self, train_documents: list[Document]) -> list[str]:
        """What a tokenizer trained for this data learns from (subclasses add their own text)."""
        return [d.text for d in train_documents]

    def _tokenize_to(self, file: Path, documents: list[Document]) -> None:
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer([d.text for d in documents], add_special_tokens=False)["input_ids"]
        dtype = np.uint16 if len(self.tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
        tokens = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=dtype, count=sum(len(d) + 1 for d in ids))
        with atomic_file(file) as f:
            f.write(np.array([np.dtype(dtype).itemsize], dtype=np.uint8).tobytes())
            f.write(tokens.tobytes())

    @staticmethod
    def _load(file: Path) -> np.ndarray:
        itemsize = int(np.fromfile(file, dtype=np.uint8, count=1)[0])
        return np.memmap(file, dtype={2: np.uint16, 4: np.uint32}[itemsize], mode="r", offset=1)

    @property
    def vocab_size(self) -> int:
        self.prepare_data()
        return len(self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        seq_len = self.hparams.seq_len
        self.train_set = PackedBlocks(self._load(self.arrays["train"]), seq_len)
        self.val_set = PackedBlocks(self._load(self.arrays["val"]), seq_len)
        if len(self.train_set) == 0:
            source = self.hparams.path or self.hparams.dataset or "the data"
            raise DataError(
                f"{source}: the training split has {len(self.train_set.tokens)} tokens, fewer than "
                f"data.seq_len + 1 = {seq_len + 1}"
            )

    # -- loaders --------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        return ResumableLoader.for_trainer(
            self.train_set, h.batch_size, h.seed, self.trainer, num_workers=h.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        """zoo keeps no separate test split of a pretraining corpus: ``zoo test`` reports the val split, and
        says so."""
        log.warning("zoo test: text data has no test split of its own; test/loss is measured on the validation split")
        return self.val_dataloader()
