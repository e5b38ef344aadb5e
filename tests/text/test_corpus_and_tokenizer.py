"""The embedded corpus and the locally trained byte-level BPE."""

import sys

import pytest
from transformers import AutoTokenizer

from zoo.text import corpus
from zoo.text.corpus import embedded_corpus
from zoo.text.tokenizer import EOS, PAD, cached_bpe, load_tokenizer, train_bpe


def test_embedded_corpus_is_large_deterministic_english():
    documents = embedded_corpus()
    text = "\n".join(d.text for d in documents)
    assert len(documents) > 300 and len(text) > 1_000_000
    _, stdlib, modules = corpus._sources()
    again = corpus._read(stdlib, modules[:80])  # parsed again from the files (the first 80 modules: 0.3 s, not 4)
    assert list(again) == documents[: len(again)]
    documents.pop()
    assert len(embedded_corpus()) == len(documents) + 1  # each call hands out its own list
    words = text.lower().split()
    assert words.count("the") > 0.02 * len(words)  # English prose, not code


def test_the_corpus_is_parsed_once_then_read_from_its_cache_file_and_parsed_again_when_that_is_damaged(
    tmp_path, monkeypatch
):
    parsed = []
    documents = (corpus.Document("topic:if", "The if statement."),) * 120

    def read(stdlib, modules):
        parsed.append(len(modules))
        return documents

    monkeypatch.setattr(corpus, "_read", read)
    sources = corpus._sources()
    monkeypatch.setattr(corpus, "_sources", lambda: sources)  # the standard library walked once, not six times
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    for damage in [None, None, "{not json", "[]", '[["topic:if", 3]]', None]:
        corpus._documents.cache_clear()
        (cached,) = (tmp_path / "corpus").iterdir() if parsed else (None,)
        if damage:
            cached.write_text(damage)
        assert embedded_corpus() == list(documents)
    assert len(parsed) == 4  # the first build and the three damaged files; never when the file is whole
    monkeypatch.setattr(sys, "version", "3.99.0 (another interpreter)")
    corpus._documents.cache_clear()
    embedded_corpus()
    assert len(parsed) == 5 and len(list((tmp_path / "corpus").iterdir())) == 2
    corpus._documents.cache_clear()  # the rest of the session reads the real corpus again


def test_bpe_round_trips_text_and_follows_neox_conventions(tmp_path):
    texts = ["the answer is 42", "naïve café – ü€ emoji 🙂", "def f(x):\n    return x * 2"] * 50
    tokenizer = train_bpe(texts, vocab_size=300)
    assert tokenizer.convert_tokens_to_ids(EOS) == 0 and tokenizer.convert_tokens_to_ids(PAD) == 1
    for text in texts[:3]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert reloaded(texts[1])["input_ids"] == tokenizer(texts[1])["input_ids"]
    assert load_tokenizer(tmp_path / "tok" / "tokenizer.json").eos_token_id == 0


def test_cached_bpe_is_trained_once_per_text_and_size(tmp_path):
    texts = ["one two three four five six seven"] * 20
    first = cached_bpe(texts, 280, tmp_path)
    directories = list(tmp_path.iterdir())
    stamp = (directories[0] / "tokenizer.json").stat().st_mtime_ns
    again = cached_bpe(texts, 280, tmp_path)
    assert (directories[0] / "tokenizer.json").stat().st_mtime_ns == stamp
    assert again("one two")["input_ids"] == first("one two")["input_ids"]
    cached_bpe(texts + ["more"], 280, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_a_tokenizer_without_an_eos_token_is_one_line(tmp_path):
    from tokenizers import Tokenizer, models

    from zoo.errors import ConfigError

    Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="has no EOS token"):
        load_tokenizer(tmp_path / "tokenizer.json")
