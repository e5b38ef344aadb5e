"""BM25 retrieval (zoo/search/retriever.py, zoo/search/corpus.py): corpora in their formats, the index cached by
content, rankings that follow term statistics, and the embedded world built so that rewriting matters."""

import json

import pytest

from zoo.errors import DataError
from zoo.search.corpus import Passage, load_passages
from zoo.search.retriever import BM25Retriever
from zoo.search.rewards import hit
from zoo.search.world import build_search_world, default_world

ANIMALS = [
    Passage("1", "Otters", "Otters are aquatic mammals that eat fish and shellfish."),
    Passage("2", "Falcons", "Falcons are birds of prey; the peregrine falcon dives fastest."),
    Passage("3", "Salmon", "Salmon swim upstream to spawn; bears and otters eat salmon."),
    Passage("4", "Moles", "Moles dig tunnels and eat earthworms."),
]


def test_rankings_follow_bm25(tmp_path):
    retriever = BM25Retriever(ANIMALS, cache=tmp_path)
    (best,) = retriever.search(["which bird dives fastest"], k=1)
    assert [p.id for p in best] == ["2"]
    both = retriever.search(["otters salmon"], k=4)[0]
    assert [p.id for p in both][:2] == ["3", "1"]  # the passage with both words first
    assert len(both) == 2  # passages that share no word score 0 and are not returned
    assert retriever.search(["quantum chromodynamics"], k=3) == [[]]
    assert retriever.search([], k=3) == []
    assert len(retriever.search(["eat"], k=10)[0]) == 3  # k larger than the matches


def test_index_is_cached_by_content(tmp_path):
    first = BM25Retriever(ANIMALS, cache=tmp_path)
    again = BM25Retriever(list(ANIMALS), cache=tmp_path)
    assert first.build_seconds > 0 and again.build_seconds == 0 and again.key == first.key
    changed = BM25Retriever([*ANIMALS[:3], Passage("4", "Moles", "Moles dig tunnels.")], cache=tmp_path)
    assert changed.key != first.key and changed.build_seconds > 0
    for f in first.index_dir.iterdir():  # a damaged entry is rebuilt, not trusted
        f.write_bytes(b"garbage")
    rebuilt = BM25Retriever(ANIMALS, cache=tmp_path)
    assert rebuilt.build_seconds > 0 and [p.id for p in rebuilt.search(["falcon"], 1)[0]] == ["2"]


def test_corpus_formats_and_errors(tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) for p in ANIMALS) + "\n")
    assert load_passages(plain) == ANIMALS
    dpr = tmp_path / "dpr.jsonl"
    dpr.write_text(json.dumps({"id": "9", "contents": '"Moles"\nMoles dig tunnels.'}) + "\n")
    assert load_passages(dpr) == [Passage("9", "Moles", "Moles dig tunnels.")]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.jsonl").write_text(plain.read_text())
    (folder / "a.txt").write_text("First paragraph\nwraps.\n\n\nSecond one.\n")
    passages = load_passages(folder)
    assert [p.text for p in passages[:2]] == ["First paragraph wraps.", "Second one."] and passages[0].title == "a"
    assert len(passages) == 2 + len(ANIMALS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "text": "ok"}) + "\n" + json.dumps({"id": "2", "body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: a passage needs a 'text'"):
        load_passages(bad)
    with pytest.raises(DataError, match="corpus not found"):
        load_passages(tmp_path / "missing.jsonl")


def test_world_two_hop_questions_need_rewriting(tmp_path):
    world = default_world()
    retriever = BM25Retriever(list(world.passages), cache=tmp_path)
    two_hop = [q for q in world.questions if len(q.hops) == 2]
    assert len(two_hop) == 320 and len(world.passages) == 240
    for question in two_hop:
        (top,) = retriever.search([question.text], k=1)[0]
        assert top.title == question.hops[0].entity  # the bridge's passage, which lacks the answer
        assert not hit([top], question.answer)
        for hop in question.hops:  # the rewritten queries find each hop's passage
            (found,) = retriever.search([f"{hop.entity} {hop.keyword}"], k=1)[0]
            assert found.title == hop.entity and hop.value in found.text
    assert build_search_world(seed=0) == world and build_search_world(seed=1) != world
