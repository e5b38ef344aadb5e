"""Reading, splitting, tokenizing, caching and packing pretraining text."""

import json

import numpy as np
import pytest

from zoo.datamodules.text import TextDataModule, read_documents, split_documents
from zoo.errors import DataError
from zoo.text.corpus import Document

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _write_jsonl(path, n=40):
    rows = [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(30)), "id": i} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def _module(tmp_path, **kwargs):
    defaults = dict(vocab_size=300, seq_len=16, batch_size=4, cache=str(tmp_path / "cache"))
    return TextDataModule(**{**defaults, **kwargs})


def test_jsonl_txt_and_folders_become_documents(tmp_path):
    rows = _write_jsonl(tmp_path / "a.jsonl", 3)
    (tmp_path / "b.txt").write_text("plain text file")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    documents = read_documents(tmp_path)
    assert [d.text for d in documents] == [r["text"] for r in rows] + ["plain text file"]
    assert documents[0].name.endswith("a.jsonl:1")


@pytest.mark.parametrize(
    "line, message",
    [("{not json", "not valid JSON"), ('{"body": "x"}', "no string field 'text'"), ("[1, 2]", "must be a JSON object")],
)
def test_a_malformed_row_is_an_error_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"data\.jsonl:3: .*{message}"):
        read_documents(path)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="data.path not found"):
        read_documents(tmp_path / "nope.txt")


def test_split_is_deterministic_disjoint_and_sized():
    documents = [Document(f"doc{i}", f"text {i}") for i in range(200)]
    train, val = split_documents(documents, 0.1, seed=5)
    assert len(val) == 20 and len(train) == 180
    assert not {d.name for d in train} & {d.name for d in val}
    assert split_documents(documents, 0.1, seed=5) == (train, val)
    assert split_documents(documents, 0.1, seed=6)[1] != val


def test_a_single_document_is_cut_at_a_line_break():
    text = "\n".join(f"line {i}" for i in range(100))
    (train,), (val,) = split_documents([Document("one", text)], 0.1, seed=0)
    assert train.text + val.text == text
    assert train.text.endswith("\n") and 0.05 < len(val.text) / len(text) < 0.15


def test_blocks_pack_the_token_stream_and_shift_by_one(tmp_path):
    _write_jsonl(tmp_path / "d.jsonl")
    dm = _module(tmp_path, path=str(tmp_path / "d.jsonl"), val_fraction=0.1)
    dm.setup("fit")
    stream = np.asarray(dm.train_set.tokens)
    assert len(dm.train_set) == (len(stream) - 1) // 16
    block = dm.train_set[2]
    assert block.tolist() == stream[32:49].tolist()
    assert (stream == dm.tokenizer.eos_token_id).sum() == 36  # one EOS per training document
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 17)


def test_tokenized_arrays_are_cached_by_content(tmp_path, monkeypatch):
    _write_jsonl(tmp_path / "d.jsonl")
    first = _module(tmp_path, path=str(tmp_path / "d.jsonl"))
    first.setup()
    calls = []
    monkeypatch.setattr(TextDataModule, "_tokenize_to", lambda self, file, docs: calls.append(file))
    second = _module(tmp_path, path=str(tmp_path / "d.jsonl"))
    second.setup()
    assert calls == [] and second.arrays == first.arrays
    _write_jsonl(tmp_path / "d.jsonl", 41)  # new content, new cache entry
    third = _module(tmp_path, path=str(tmp_path / "d.jsonl"))
    with pytest.raises(FileNotFoundError):
        third.setup()  # the patched tokenizer wrote nothing: the new content was not served from the old cache
    assert len(calls) == 2


def test_a_datasets_directory_in_the_hub_layout(tmp_path):
    dataset = tmp_path / "my_dataset" / "data"
    dataset.mkdir(parents=True)
    rows = _write_jsonl(dataset / "train-00000-of-00001.jsonl", 30)
    dm = _module(tmp_path, dataset=str(tmp_path / "my_dataset"), val_fraction=0.2)
    dm.setup()
    assert dm.tokenizer.decode(dm.train_set[0][:5].tolist()).split()[0] in WORDS
    assert len(rows) == 30


def test_path_and_dataset_together_are_refused(tmp_path):
    with pytest.raises(DataError, match="not both"):
        _module(tmp_path, path="a.txt", dataset="b")


def test_tinyshakespeare_as_one_file(tmp_path, shared_data):
    path = shared_data("tinyshakespeare/input.txt")
    dm = _module(tmp_path, path=str(path), vocab_size=512, seq_len=128)
    dm.setup()
    assert len(dm.train_set) > 10 * len(dm.val_set) > 0
    head = dm.tokenizer.decode(np.asarray(dm.train_set.tokens[:2000]).tolist())
    assert path.read_text().startswith(head)
