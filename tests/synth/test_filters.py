"""MinHash near-duplicate removal and 13-gram decontamination on planted cases."""

import json

import pytest

from zoo.errors import DataError
from zoo.synth.decontamination import BenchmarkIndex
from zoo.synth.near_duplicates import near_duplicates

BASE = (
    "A train leaves the station at nine in the morning travelling at sixty miles per hour while a second "
    "train leaves the same station two hours later at eighty miles per hour on a parallel track. At what time "
    "does the second train catch up with the first one, and how far from the station are they then?"
)


def test_planted_near_duplicates_go_and_the_first_of_each_group_stays():
    edited = BASE.replace("nine in the morning", "nine in the morning,").upper()  # case and punctuation
    one_word = BASE.replace("parallel", "neighbouring")
    near_miss = (  # same opening, different question: shares far fewer 3-grams
        "A train leaves the station at nine in the morning. How many wheels does a typical freight car have, "
        "and why do engineers prefer steel wheels on steel rails for heavy loads over long distances?"
    )
    other = "Compute the derivative of x squared times the sine of x with respect to x."
    texts = [BASE, other, edited, near_miss, one_word, other]
    assert near_duplicates(texts, threshold=0.7) == {2: 0, 4: 0, 5: 1}


def test_near_duplicate_threshold_is_checked():
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates(["a"], threshold=0)


def _index(tmp_path, rows: list[dict]) -> BenchmarkIndex:
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = BenchmarkIndex(13)
    index.add_file(path)
    return index


def test_a_planted_benchmark_13_gram_is_found_through_case_and_punctuation(tmp_path):
    index = _index(tmp_path, [{"problem": BASE}, {"question": "What is 2 + 2?"}])
    words = BASE.split()
    planted = "Consider this: " + " ".join(words[10:23]).upper().replace(" ", ", ", 1) + " -- and more."
    assert index.match(["clean text", planted]) == f"{tmp_path / 'bench.jsonl'}:1"
    twelve = "Consider this: " + " ".join(words[10:22]) + " -- and more."
    assert index.match([twelve]) is None  # twelve shared words are not a 13-gram


def test_a_short_benchmark_question_copied_whole_is_caught(tmp_path):
    index = _index(tmp_path, [{"question": "What is two plus two?"}])
    assert index.match(["Now answer: what is two plus two? Explain."]) == f"{tmp_path / 'bench.jsonl'}:1"
    assert index.match(["What is two plus three?"]) is None


def test_real_gsm8k_test_questions_are_caught_when_reworded_around(tmp_path, shared_data):
    path = shared_data("gsm8k/test.jsonl")
    index = BenchmarkIndex(13)
    assert index.add_file(path) == 1319
    question = json.loads(path.read_text().splitlines()[100])["question"]
    assert index.match([f"Here is a new problem. {question} Show your work."]) == f"{path}:101"
    assert index.match(["A farmer has 12 cows and buys 7 more; how many cows does the farmer have now?"]) is None


def test_benchmark_files_that_cannot_be_used_are_named(tmp_path):
    with pytest.raises(DataError, match="not found"):
        BenchmarkIndex().add_file(tmp_path / "missing.jsonl")
    path = tmp_path / "b.jsonl"
    path.write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="b.jsonl: no field problem or question"):
        BenchmarkIndex().add_file(path)


def _words(start: int, count: int) -> list[str]:
    return [f"w{i}" for i in range(start, start + count)]


def test_the_default_filters_sit_where_the_paper_puts_them():
    """``zoo synth run``'s own defaults (configs/synth/default.yaml), not values a test picks: a question sharing a
    13-word run with a benchmark is removed and one sharing 12 is not; a question whose word-3-gram Jaccard with
    an earlier one is 0.85 is a near duplicate and one at 0.55 is not (MinHash at 0.7; LSH proposes a pair at
    0.85 surely, at 0.8 only likely)."""
    from zoo.synth.pipeline import load_config

    config = load_config("default", ["workdir=w"])
    n, minhash = config["decontaminate"]["n"], config["minhash"]
    index = BenchmarkIndex(n)
    index.add(" ".join(_words(0, 30)), "bench:1")
    assert index.match([" ".join(_words(10, 13) + _words(100, 10))]) == "bench:1"
    assert index.match([" ".join(_words(10, 12) + _words(100, 10))]) is None
    first = " ".join(_words(0, 40))
    close = " ".join(_words(0, 37) + _words(200, 3))  # 35 shared of 41 trigrams: 0.85
    far = " ".join(_words(0, 29) + _words(300, 11))  # 27 of 49: 0.55
    settings = dict(threshold=minhash["threshold"], ngram=minhash["ngram"], num_perm=minhash["num_perm"])
    assert near_duplicates([first, close], **settings) == {1: 0}
    assert near_duplicates([first, far], **settings) == {}


def test_a_near_duplicate_is_named_after_the_first_kept_text_it_matches():
    """Two kept texts (Jaccard 0.6 between them) and a third within 0.78 of each: it duplicates the first."""
    shared, one, two = _words(0, 30), _words(100, 10), _words(200, 10)
    texts = [" ".join(shared + one), " ".join(shared + two), " ".join(shared + one[:5] + two[:5])]
    assert near_duplicates(texts, threshold=0.7, ngram=1) == {2: 0}
