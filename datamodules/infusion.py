"""Knowledge infusion during pretraining (arXiv:2509.19371; notes §2): the general text corpus of
:class:`~zoo.datamodules.text.TextDataModule`, general knowledge and a chosen amount of domain knowledge
(:mod:`zoo.infusion.knowledge`), mixed deterministically into one pretraining stream.

The training stream holds ``train_tokens`` tokens, the **general corpus** (the corpus's training split, cycled,
with every general fact's renderings ``general_repeats`` times: what the model knows and should retain) and the
**infusion** (the first ``domain_facts`` domain facts' renderings ``domain_repeats`` times each). **The infusion
amount is** ``domain_facts``; its tokens and share of the stream are logged as ``infusion/domain_tokens`` and
``infusion/domain_share``.

At a fixed token budget the infusion takes its tokens from the general corpus, text and general facts alike:
with a domain share d, the stream keeps the first (1 − d) of the general facts' exposures (pass after pass, so
every fact loses about the same) and text fills the rest. So general knowledge keeps its density within the
general corpus while the corpus shrinks, as when a pretraining mixture gives a share of a fixed budget to domain
data. (A choice, both alternatives measured in docs/methods/infusion.md: when the infusion displaced text only,
every general fact kept all its exposures and no model of the CPU sweep forgot; with the general facts first and the
infusion after them, the text alone of the second part erased them.)

Knowledge sentences (each followed by EOS) and 64-token text chunks are shuffled together with ``seed`` and
packed into blocks of ``seq_len + 1``; the same settings give the same stream. The tokenizer learns from the
corpus and every fact of the world (all domain facts, whatever the amount), so runs of a sweep share it. The
validation split is the corpus's held-out text; fact recall is measured by
:class:`zoo.callbacks.fact_recall.FactRecall` on ``recall_facts`` facts of each kind.
"""

from __future__ import annotations

import random

import numpy as np

from zoo.datamodules.text import PackedBlocks, TextDataModule
from zoo.errors import DataError
from zoo.infusion.knowledge import Fact, KnowledgeWorld, build_world

TEXT_CHUNK = 64


class InfusionDataModule(TextDataModule):
    def __init__(
        self,
        general_entities: int = 300,
        domain_entities: int = 600,
        domain_facts: int = 0,
        general_repeats: int = 8,
        domain_repeats: int = 8,
        train_tokens: int = 1_000_000,
        recall_facts: int = 300,
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        seq_len: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        seed: int = 1234,
        num_workers: int = 0,
        cache: str | None = None,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer,
            vocab_size=vocab_size,
            seq_len=seq_len,
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            num_workers=num_workers,
            cache=cache,
        )
        self.save_hyperparameters()
        self.world: KnowledgeWorld = build_world(general_entities, domain_entities, seed)
        if not 0 <= domain_facts <= len(self.world.domain):
            raise DataError(f"data.domain_facts={domain_facts} must lie in [0, {len(self.world.domain)}]")
        self.stats: dict[str, float] = {}

    @property
    def infused(self) -> tuple[Fact, ...]:
        return self.world.domain[: self.hparams.domain_facts]

    def tokenizer_texts(self, train_documents) -> list[str]:
        facts = self.world.general + self.world.domain
        return super().tokenizer_texts(train_documents) + [s for f in facts for s in f.statements()]

    def recall_sets(self) -> dict[str, list[Fact]]:
        """The facts evaluation asks about: ``general`` (retention) and ``domain`` (acquisition, infused only)."""
        rng = random.Random(f"recall:{self.hparams.seed}")
        n = self.hparams.recall_facts
        general = list(self.world.general)
        sets = {"general": rng.sample(general, min(n, len(general)))}
        if self.infused:
            sets["domain"] = rng.sample(list(self.infused), min(n, len(self.infused)))
        return sets

    def _units(self, statements: list[str]) -> list[list[int]]:
        if not statements:
            return []
        eos = self.tokenizer.eos_token_id
        return [[*ids, eos] for ids in self.tokenizer(statements, add_special_tokens=False)["input_ids"]]

    def _stream(self, text: np.ndarray) -> np.ndarray:
        h = self.hparams
        # each statement tokenized once; its repeats share the token list (the shuffle only reorders units)
        general = self._units([s for f in self.world.general for s in f.statements()]) * h.general_repeats
        domain = self._units([s for f in self.infused for s in f.statements()]) * h.domain_repeats
        domain_tokens = sum(map(len, domain))
        general = general[: round(len(general) * max(0.0, 1 - domain_tokens / h.train_tokens))]
        general_tokens = sum(map(len, general))
        text_tokens = h.train_tokens - general_tokens - domain_tokens
        if text_tokens < 0:
            raise DataError(
                f"data.train_tokens={h.train_tokens} is smaller than the knowledge alone "
                f"({general_tokens + domain_tokens} tokens): raise it or lower the repeats or data.domain_facts"
            )
        cycled = np.tile(np.asarray(text), -(-text_tokens // max(len(text), 1)))[:text_tokens]
        units = general + domain + [cycled[i : i + TEXT_CHUNK].tolist() for i in range(0, text_tokens, TEXT_CHUNK)]
        random.Random(f"stream:{h.seed}:{h.domain_facts}").shuffle(units)
        self.stats = {
            "infusion/domain_facts": float(h.domain_facts),
            "infusion/domain_tokens": float(domain_tokens),
            "infusion/domain_share": domain_tokens / h.train_tokens,
            "infusion/general_tokens": float(general_tokens),
        }
        return np.fromiter((t for unit in units for t in unit), dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.train_set = PackedBlocks(self._stream(self._load(self.arrays["train"])), self.hparams.seq_len)
