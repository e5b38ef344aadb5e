"""Generated tasks: the sloppy-teacher arithmetic of the RL demonstration, countdown, the hidden methods, and their
options."""

from collections import Counter

import pytest

from zoo.errors import DataError, ZooError
from zoo.tasks.registry import (
    METHODS,
    TASKS,
    _without_carries,
    apply_method,
    arithmetic_problems,
    chain_problems,
    chain_reward,
    countdown_problems,
    countdown_reward,
    load_problems,
    method_keywords,
)


@pytest.mark.parametrize(
    "a, b, op, sloppy",
    [(37, 74, "+", 101), (59, 63, "+", 112), (48, 71, "+", 119), (52, 38, "-", 26), (87, 78, "-", 11)],
)
def test_the_sloppy_teacher_forgets_every_carry_and_borrow(a, b, op, sloppy):
    assert _without_carries(a, b, op) == sloppy


def test_carry_only_problems_all_need_a_carry_and_the_teacher_errs_at_the_given_rate():
    problems = arithmetic_problems(3000, seed=7, carry_only=True, teacher_error=0.7)
    wrong = 0
    for p in problems:
        a, op, b = p.prompt[:2], p.prompt[2], p.prompt[3:5]
        truth = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert p.reference == str(truth) and _without_carries(int(a), int(b), op) != truth
        wrong += p.solution != p.reference
        assert p.solution in (str(truth), str(_without_carries(int(a), int(b), op)))
    assert abs(wrong / len(problems) - 0.7) < 0.03


def test_the_teacher_does_not_change_the_prompts():
    honest = arithmetic_problems(200, seed=3, carry_only=True)
    sloppy = arithmetic_problems(200, seed=3, carry_only=True, teacher_error=0.9)
    assert [p.prompt for p in honest] == [p.prompt for p in sloppy]
    assert all(p.solution == p.reference for p in honest)


def test_train_and_validation_prompts_are_disjoint_and_options_reach_the_generator():
    train, val = load_problems("arithmetic", None, None, 500, 50, 1, {"digits": 3})
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    assert all(len(p.prompt) == 8 for p in train + val)  # "123+456="


def test_unknown_options_end_in_one_line_naming_them():
    with pytest.raises(DataError, match="unknown data.options for arithmetic: carry.*teacher_error"):
        load_problems("arithmetic", None, None, 10, 5, 1, {"carry": True})
    with pytest.raises(DataError, match="task 'gsm8k' takes no data.options"):
        load_problems("gsm8k", "x.jsonl", None, 10, 5, 1, {"digits": 2})


def test_countdown_solutions_score_one():
    for p in countdown_problems(50, seed=2, numbers=4):
        assert countdown_reward(p.prompt, p.solution, p.reference) == 1.0
        assert countdown_reward(p.prompt, p.solution + "+1", p.reference) == 0.0


def test_chain_solutions_work_one_step_per_chunk_reusing_the_last_result():
    import re

    for p in chain_problems(500, seed=4, terms=4):
        steps, answer = p.solution.split(" #")
        value = None
        for step in steps.split(" "):
            a, op, b, result = re.fullmatch(r"(\d+)([+-])(\d+)=(-?\d+)", step).groups()
            assert value is None or int(a) == value  # each step starts from the previous result
            value = int(a) + int(b) if op == "+" else int(a) - int(b)
            assert int(result) == value
        assert answer == p.reference == str(value) == str(eval(p.prompt[:-1]))
        assert chain_reward(p.prompt, p.solution, p.reference) == 1
        assert chain_reward(p.prompt, steps, p.reference) == 0  # no answer marker: no answer


def test_the_chain_teachers_sloppy_steps_carry_on_from_their_wrong_result():
    problems = chain_problems(2000, seed=5, teacher_error=0.5)
    honest = chain_problems(2000, seed=5)
    assert [p.prompt for p in problems] == [p.prompt for p in honest]
    right = sum(chain_reward(p.prompt, p.solution, p.reference) for p in problems) / len(problems)
    assert 0.4 < right < 0.75  # two steps, each sloppy half the time, and only carries and borrows change


def test_the_methods_answer_names_its_method_and_only_the_hidden_rule_links_keyword_and_method():
    rule = method_keywords(8, 32, world=0)
    assert len(rule) == 32 and sorted(Counter(rule.values()).values()) == [4] * 8  # each method, four keywords
    assert sorted(Counter(method_keywords(3, 8, world=0).values()).values()) == [2, 3, 3]  # as even as can be
    train, val = load_problems("methods", None, None, 400, 100, 7, {"keywords": 32})
    for problem in train + val:
        keyword, letters = problem.prompt.rstrip("=").split()
        method, answer = problem.solution.split(" #")
        assert method == rule[keyword] and answer == problem.reference
        assert [ord(a) - ord(q) for q, a in zip(letters, answer, strict=True)] == [METHODS.index(method)] * 4
        assert TASKS["methods"].reward(problem.prompt, problem.solution, problem.reference) == 1.0
        # the answer reveals the method: no other method gives it
        assert [m for m in METHODS if apply_method(m, letters) == answer] == [method]
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    taught, _ = load_problems(
        "methods", None, None, 4000, 10, 7, {"assignment": "random", "methods": 4, "keywords": 32}
    )
    per_keyword = Counter(p.solution.split(" #")[0] for p in taught if p.prompt.startswith(next(iter(rule))))
    assert len(per_keyword) == 4 and max(per_keyword.values()) < 2 * min(per_keyword.values())  # no rule taught


@pytest.mark.parametrize(
    "options, named",
    [({"methods": 9}, "data.options.methods"), ({"assignment": "known"}, "data.options.assignment"),
     ({"keywords": 3}, "data.options.keywords")],
)  # fmt: skip
def test_bad_methods_options_are_one_line_naming_them(options, named):
    with pytest.raises(ZooError, match=named):
        load_problems("methods", None, None, 10, 10, 0, options)
