"""Frozen readers: what answers a question from the passages a search agent retrieved (QAgent's generator G,
Eq. 8-9; the stage-2 reward's supervisor and the evaluation of the agent as a plug-in retrieval module).

A reader answers a batch: ``reader(questions, passage_lists) -> answers``. Two kinds, interchangeable:

- :class:`ModelReader`: any language model zoo loads (``hub:NAME``, a hub entry or run directory, or a Hugging
  Face model directory), greedy on its own native or transformers engine, prompted as the authors' code prompts
  its frozen reader: ``"{passages}\\n\\nAnswer the given question. The answer should be a few short words.
  Question: {question}."`` (through the tokenizer's chat template when it has one); its answer is its first line.
  It may be held in 8-bit or 4-bit (``module.reader_quantization``, :mod:`zoo.training.quantization`).
- :class:`ExtractiveReader`: deterministic, no model (tests, and a reader that never hallucinates): the sentence
  of the passages that shares the most content words with the question, and, when a sentence that names one of
  its new words shares a question word it lacked, that second sentence (the second hop); the answer is the new
  content words of the last sentence, in order. Words are lower-cased, English stop words dropped, and crude
  suffixes (-ers, -er, -ed, -ing, -es, -s) cut.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.search.corpus import Passage
from zoo.training.quantization import quantize_frozen

READER_PROMPT = "{passages}\n\nAnswer the given question. The answer should be a few short words. Question: {question}."
_STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have he her his how in is it its of on or she that the "
    "their there they this to was were what when where which who whom whose why will with".split()
)
_SUFFIXES = ("ers", "er", "ed", "ing", "es", "s")
_WORD = re.compile(r"[A-Za-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def passages_text(passages: Sequence[Passage]) -> str:
    return "\n".join(p.render(rank) for rank, p in enumerate(passages, start=1))


def reader_prompt(question: str, passages: Sequence[Passage]) -> str:
    return READER_PROMPT.format(passages=passages_text(passages), question=question.rstrip("?. ") + "?")


def _stem(word: str) -> str:
    word = word.lower()
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content(text: str) -> list[tuple[str, str]]:
    """(word, stem) of the content words of ``text``, in order."""
    return [(w, _stem(w)) for w in _WORD.findall(text) if w.lower() not in _STOPWORDS]


class ExtractiveReader:
    def __call__(self, questions: Sequence[str], passage_lists: Sequence[Sequence[Passage]]) -> list[str]:
        return [self.answer(q, p) for q, p in zip(questions, passage_lists, strict=True)]

    @staticmethod
    def answer(question: str, passages: Sequence[Passage]) -> str:
        asked = {s for _, s in _content(question)}
        sentences = [_content(s) for p in passages for s in _SENTENCE.split(p.text) if s.strip()]
        if not sentences:
            return ""

        def shared(sentence: list[tuple[str, str]], words: set[str]) -> int:
            return len({s for _, s in sentence} & words)

        first = max(sentences, key=lambda s: shared(s, asked))  # max keeps the earliest of equals
        found = {s for _, s in first} - asked
        unmet = asked - {s for _, s in first}
        hops = [s for s in sentences if s is not first and shared(s, found) and shared(s, unmet)]
        last = max(hops, key=lambda s: shared(s, unmet)) if hops else first
        known = asked | (found if hops else set())
        return " ".join(w for w, s in last if s not in known)


class ModelReader:
    def __init__(
        self,
        source: str,
        max_new_tokens: int = 8,
        device: str | torch.device = "cpu",
        quantization: str | None = None,
    ) -> None:
        from zoo.generation import in_place_engine
        from zoo.text.chat import chat_format
        from zoo.text.tokenizer import load_tokenizer

        self.source, self.max_new_tokens = source, max_new_tokens
        self.model, tokenizer_dir = _load_reader(source)
        self.model.requires_grad_(False).eval().to(device)
        if quantization is not None:  # held by bitsandbytes (zoo.training.quantization), on its device
            quantize_frozen(self.model, quantization, "module.reader_quantization")
        if tokenizer_dir is None:
            raise ConfigError(f"reader {source}: no tokenizer saved with the model")
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.chat = chat_format(self.tokenizer, "auto", None)
        self.engine = in_place_engine(self.model, self.tokenizer)

    def prompt_ids(self, question: str, passages: Sequence[Passage]) -> list[int]:
        text = reader_prompt(question, passages)
        if self.chat is not None:
            return self.chat.prompt_ids(text)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def __call__(self, questions: Sequence[str], passage_lists: Sequence[Sequence[Passage]]) -> list[str]:
        from zoo.generation.sampling import SamplingParams

        if not questions:
            return []
        stops = self.chat.stop_token_ids if self.chat is not None else (self.tokenizer.eos_token_id,)
        params = SamplingParams(self.max_new_tokens, 0.0, stop_token_ids=tuple(stops), stop_strings=("\n",), seed=0)
        prompts = [self.prompt_ids(q, p) for q, p in zip(questions, passage_lists, strict=True)]
        result = self.engine.generate(prompts, 1, params)
        texts = [self.tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in result.samples]
        return [t.strip().split("\n")[0].strip() for t in texts]


def _load_reader(source: str) -> tuple[torch.nn.Module, Path | None]:
    """A zoo model (hub entry, run directory, checkpoint) or a Hugging Face model directory, and its tokenizer."""
    from zoo.hub.store import MANIFEST, load_model
    from zoo.models import build_model, config_from_dict

    path = Path(source).expanduser()
    if not source.startswith("hub:") and (path / "config.json").is_file() and not (path / MANIFEST).is_file():
        return build_model(config_from_dict({"arch": "hf", "path": str(path)})), path
    loaded = load_model(source)
    return loaded.model, loaded.tokenizer_dir


def build_reader(
    spec: str, max_new_tokens: int = 8, device: str | torch.device = "cpu", quantization: str | None = None
):
    """``extractive``, or a model source for :class:`ModelReader` (held in ``quantization``: 8bit | 4bit)."""
    if spec == "extractive":
        return ExtractiveReader()
    return ModelReader(spec, max_new_tokens, device, quantization)
