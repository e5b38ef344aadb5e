"""QAgent's tag language and rewards (zoo/search/tags.py, zoo/search/rewards.py) on hand-written trajectories,
against values worked out by hand from the paper's Eq. 7-10 and SQuAD's normalisation."""

import pytest

from zoo.search.corpus import Passage
from zoo.search.readers import ExtractiveReader
from zoo.search.rewards import (
    cover_match,
    exact_match,
    hit,
    normalize_answer,
    stage1_reward,
    stage2_reward,
    token_f1,
)
from zoo.search.tags import format_ok, information_block, last_answer, parse_action, retrieved_passages

KALOMITE = Passage("c", "Kalomite", "Kalomite was discovered by Dorvanu. Kalomite contains iron.")
DORVANU = Passage("p", "Dorvanu", "Dorvanu is a chemist. Dorvanu was born in Lomira.")

GOOD = (
    "<plan>find the discoverer</plan><search><query>Kalomite discovered</query></search>"
    + information_block([KALOMITE])
    + "<reflection>Dorvanu found it</reflection><plan>find the birthplace</plan>"
    "<search><query>Dorvanu born</query><query>Dorvanu</query></search>"
    + information_block([DORVANU, KALOMITE])
    + "<reflection>born in Lomira</reflection><answer>Lomira</answer>"
)


def test_parse_action_reads_answers_queries_and_falls_back_to_lines():
    assert parse_action("<plan>x</plan><answer> The Lomira </answer>").answer == "The Lomira"
    assert parse_action("<answer>a</answer><answer>b</answer>").answer == "b"
    search = parse_action("<search><query>a b</query> <query> </query><query>c</query></search>")
    assert (search.kind, search.queries) == ("search", ("a b", "c"))
    four = "<search>" + "".join(f"<query>q{i}</query>" for i in range(4)) + "</search>"
    assert parse_action(four).queries == ("q0", "q1", "q2")  # at most 3 a round
    assert parse_action("<search>first line\nsecond</search>").queries == ("first line", "second")
    assert parse_action("<search>\n </search>").kind == "invalid"
    assert parse_action("<plan>thinking</plan>").kind == "invalid"


def test_format_check_follows_the_authors_rules():
    assert format_ok(GOOD)
    assert not format_ok(GOOD.replace("<answer>Lomira</answer>", ""))  # no answer
    assert not format_ok(GOOD.replace("<plan>find the birthplace</plan>", ""))  # a search without its plan
    assert not format_ok(GOOD.replace("<reflection>Dorvanu found it</reflection>", ""))  # unreflected information
    assert format_ok("<plan>p</plan> \n <search><query>q</query></search>\n<information>x</information>\n "
                     "<reflection>r</reflection><answer>a</answer>")  # fmt: skip
    assert format_ok("<answer>a</answer>")  # no search: nothing to precede
    stray = "<plan>p</plan><search><query>q</query></search><information>x</information><reflection>r</reflection>"
    assert not format_ok(stray + "</plan><search><query>q</query></search><answer>a</answer>")


def test_retrieved_passages_are_parsed_and_deduplicated_in_order():
    passages = retrieved_passages(GOOD)
    assert [(p.title, p.text) for p in passages] == [(KALOMITE.title, KALOMITE.text), (DORVANU.title, DORVANU.text)]
    assert retrieved_passages("<answer>x</answer>") == []
    assert last_answer(GOOD) == "Lomira" and last_answer("<plan>no</plan>") is None


def test_squad_normalisation_and_matches():
    assert normalize_answer("The  Lomira, city!") == "lomira city"
    assert exact_match("the Lomira.", "Lomira") == 1.0
    assert exact_match("Lomira city", "Lomira") == 0.0
    assert cover_match("Lomira city", "Lomira") == 1.0
    assert exact_match("Kasen", ["Lomira", "kasen"]) == 1.0  # any of several golds
    assert token_f1("Lomira city", "Lomira") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("the", "Lomira") == 0.0 and cover_match("anything", "") == 0.0
    assert hit(retrieved_passages(GOOD), "Lomira") == 1.0 and hit(retrieved_passages(GOOD), "Kasen") == 0.0
    assert hit([KALOMITE], "Lomira") == 0.0 and hit([], "Lomira") == 0.0  # the answer only, never retrieved
    assert cover_match("Kalomite was discovered.", "red") == 0.0  # whole words, not substrings


def test_stage1_reward_is_format_times_strict_em():
    assert stage1_reward(GOOD, "Lomira") == 1.0
    assert stage1_reward(GOOD, "Kasen") == 0.0
    assert stage1_reward(GOOD.replace("<answer>Lomira</answer>", "<answer>in Lomira</answer>"), "Lomira") == 0.0
    unplanned = GOOD.replace("<plan>find the discoverer</plan>", "")
    assert stage1_reward(unplanned, "Lomira") == 0.0  # right answer, broken format


def test_stage2_reward_is_reader_cover_em_plus_half_a_hit():
    good = retrieved_passages(GOOD)
    assert stage2_reward("in Lomira", good, "Lomira") == 1.5
    assert stage2_reward("Dorvanu", good, "Lomira") == 0.5  # the gold was retrieved, the reader missed it
    naive = "<search><query>where was it born</query></search>" + information_block([KALOMITE])
    assert stage2_reward("Dorvanu", retrieved_passages(naive), "Lomira") == 0.0  # format is not required
    reader = ExtractiveReader()
    question = "Where was the discoverer of Kalomite born?"
    answer = reader([question], [good])[0]
    assert answer == "Lomira" and stage2_reward(answer, good, "Lomira") == 1.5
    assert reader([question], [retrieved_passages(naive)]) == ["Dorvanu"]  # the bridge, not the answer


def test_extractive_reader_one_hop_and_empty():
    reader = ExtractiveReader()
    assert reader(["Who discovered Kalomite?"], [[KALOMITE, DORVANU]]) == ["Dorvanu"]
    assert reader(["Where was Dorvanu born?"], [[KALOMITE, DORVANU]]) == ["Lomira"]
    assert reader(["Who discovered Kalomite?"], [[]]) == [""]
