"""Verifiable tasks: problems with a prompt, a reference answer and a worked solution (for SFT), plus the reward
that checks a completion.

Generated offline, any number, seeded:

- ``arithmetic``: ``"37+48="`` → ``"85"``: sums and differences of ``digits``-digit numbers (options: only
  problems that need a carry, and a sloppy teacher whose worked solutions forget to carry);
- ``chain``: ``"47+38-19="`` → worked ``"47+38=85 85-19=66 #66"``: chained sums and differences whose steps reuse
  the previous step's result (options: ``terms``, ``digits``, and the sloppy teacher's per-step ``teacher_error``);
  the reward checks the number after ``#``;
- ``thinking``: the chains of ``chain`` with a correct teacher's chain of thought, ``<think>7+8=15 4+3+1=8
  47+38=85 check 85-38=47 …</think> 66``, whose column work and checks are optional steps that a thinking
  budget may drop (:mod:`zoo.rl.methods.bard`, ``data.budgets``);
- ``methods``: ``"zov bdfa="`` → ``"two #dfhc"``: which of a few letter shifts a made-up keyword calls for is a
  hidden rule that only the answer reveals (RAVR's experiment; ``options.assignment: random`` for data that
  teaches the shifts but not the rule);
- ``countdown``: ``"Use 3 7 8 to make 29:"`` → an expression using each number once, e.g. ``"3*7+8"``
  (the reward evaluates the expression; any correct one scores 1).

- ``designer``: DESIGNER's four LLM prompts with a template teacher's answers (:mod:`zoo.synth.teacher`), for
  an offline writer model; the reward checks that the pipeline's parser accepts the answer.

Read from JSONL, one problem per line (a malformed row stops with its file and line):

- ``gsm8k``: ``{"question", "answer"}``, the final answer after ``####``;
- ``math``: ``{"problem", "answer"}`` (AIME/AMC style) or ``{"problem", "solution"}`` (MATH/Minerva style,
  the reference is the solution's ``\\boxed{}``), checked with math-verify.
"""

from __future__ import annotations

import ast
import inspect
import operator
import random
import re
from pathlib import Path
from typing import Any

from zoo.errors import DataError, require_int
from zoo.io.jsonl import read_jsonl
from zoo.rl.methods.bard import render, split_completion
from zoo.rl.rewards import exact_match_reward, gsm8k_answer, gsm8k_reward, math_reward
from zoo.synth.teacher import designer_problems
from zoo.tasks.base import Problem, Task, Thought


def _without_carries(a: int, b: int, op: str) -> int:
    """What a sloppy teacher answers: every column on its own, the carry or borrow forgotten, the leftmost
    column written in full (37+74 → 101, 52−38 → 26)."""
    columns = []
    while a >= 10 or b >= 10:
        x, y = a % 10, b % 10
        columns.append((x + y) % 10 if op == "+" else abs(x - y))
        a, b = a // 10, b // 10
    head = a + b if op == "+" else abs(a - b)
    return int(str(head) + "".join(map(str, reversed(columns))))


def arithmetic_problems(
    count: int, seed: int, digits: int = 2, carry_only: bool = False, teacher_error: float = 0.0
) -> list[Problem]:
    """Sums and differences of ``digits``-digit numbers. ``carry_only`` keeps the problems whose answer needs
    a carry or borrow; ``teacher_error`` is the share of worked solutions that a sloppy teacher writes without
    carrying or borrowing (the reference stays right: SFT imitates the teacher, the reward checks the truth)."""
    rng = random.Random(seed)
    low, high = 10 ** (digits - 1), 10**digits - 1
    problems = []
    while len(problems) < count:
        a, b = rng.randint(low, high), rng.randint(low, high)
        op = "+" if rng.random() < 0.5 else "-"
        if op == "-":
            a, b = max(a, b), min(a, b)
        answer = a + b if op == "+" else a - b
        sloppy = _without_carries(a, b, op)
        if carry_only and sloppy == answer:
            continue
        solution = sloppy if rng.random() < teacher_error else answer
        problems.append(Problem(f"{a}{op}{b}=", str(answer), str(solution)))
    return problems


def chain_problems(count: int, seed: int, terms: int = 3, digits: int = 2, teacher_error: float = 0.0) -> list[Problem]:
    """Chains of ``terms`` ``digits``-digit numbers joined by + and − (never below 0), worked one step per chunk:
    ``a+b=r1 r1-c=r2 #r2``, each step starting from the previous result. Each step of a worked solution is, with
    probability ``teacher_error``, written by the sloppy teacher (no carry or borrow) and the chain goes on from
    that result (the sloppy rule also where that wrong result is too small to subtract from); the reference stays
    the true value."""
    rng = random.Random(seed)
    low, high = 10 ** (digits - 1), 10**digits - 1
    problems = []
    while len(problems) < count:
        numbers = [rng.randint(low, high) for _ in range(terms)]
        value, taught, steps, expression = numbers[0], numbers[0], [], str(numbers[0])
        for b in numbers[1:]:
            op = "+" if value < b or rng.random() < 0.5 else "-"  # the prompt never depends on the teacher
            value = value + b if op == "+" else value - b
            step = taught + b if op == "+" else taught - b
            if rng.random() < teacher_error or step < 0:  # sloppy (also from a wrong result below b: no negatives)
                step = _without_carries(taught, b, op)
            steps.append(f"{taught}{op}{b}={step}")
            taught, expression = step, f"{expression}{op}{b}"
        problems.append(Problem(f"{expression}=", str(value), " ".join(steps) + f" #{taught}"))
    return problems


def chain_reward(prompt: str, completion: str, reference: str) -> float:
    """1 when the completion's text after its first ``#`` is the reference number, else 0."""
    _, marker, answer = completion.partition("#")
    return float(bool(marker) and answer.strip() == reference.strip())


def _column_work(a: int, b: int, op: str) -> str:
    """``a op b`` worked column by column, units first, with each carry or borrow written in: 47+38 → ``7+8=15
    4+3+1=8``, 52−38 → ``12-8=4 5-3-1=1``."""
    steps, carry = [], 0
    while a or b or carry:
        x, y = a % 10, b % 10
        a, b = a // 10, b // 10
        if op == "+":
            total = x + y + carry
            steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
            carry = total // 10
            if not (a or b) and carry:  # the last carry is the leading digit
                break
        else:
            borrow = int(x - y - carry < 0)
            steps.append(f"{x + 10 * borrow}-{y}{'-1' if carry else ''}={x + 10 * borrow - y - carry}")
            carry = borrow
            if not (a or b):
                break
    return " ".join(steps)


def thinking_problems(count: int, seed: int, terms: int = 3, digits: int = 2) -> list[Problem]:
    """Chains of ``terms`` ``digits``-digit numbers joined by + and − (never below 0), with a correct teacher's
    chain of thought for budgeted reasoning (BARD): per step, the step itself (essential, ``47+38=85``), before it
    its column work (optional, priority 1: ``7+8=15 4+3+1=8``) and after it a check by the inverse operation
    (optional, priority 2: ``check 85-38=47``). The solution is the whole chain, ``<think>…</think> ANSWER``."""
    rng = random.Random(seed)
    low, high = 10 ** (digits - 1), 10**digits - 1
    problems = []
    while len(problems) < count:
        numbers = [rng.randint(low, high) for _ in range(terms)]
        value, expression, thoughts = numbers[0], str(numbers[0]), []
        for b in numbers[1:]:
            op = "+" if value < b or rng.random() < 0.5 else "-"
            result = value + b if op == "+" else value - b
            check = f"check {result}-{b}={value}" if op == "+" else f"check {result}+{b}={value}"
            thoughts += [
                Thought(_column_work(value, b, op), optional=True, priority=1),
                Thought(f"{value}{op}{b}={result}"),
                Thought(check, optional=True, priority=2),
            ]
            value, expression = result, f"{expression}{op}{b}"
        problems.append(Problem(f"{expression}=", str(value), render(thoughts, str(value)), tuple(thoughts)))
    return problems


def thinking_reward(prompt: str, completion: str, reference: str) -> float:
    """1 when the answer after ``</think>`` is the reference (the budget is not looked at: ``data.budgets``
    replaces this with :class:`zoo.rl.methods.bard.BudgetReward`)."""
    answer = split_completion(completion)[1]
    return float(answer is not None and answer == reference.strip())


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(node: ast.AST) -> tuple[int, list[int]]:
    """Value and the numbers used, of an expression of integers, +, − and × only."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value, [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, left_numbers = _evaluate(node.left)
        right, right_numbers = _evaluate(node.right)
        return _OPERATORS[type(node.op)](left, right), left_numbers + right_numbers
    raise ValueError("not an expression of integers and + - *")


def countdown_problems(count: int, seed: int, numbers: int = 3) -> list[Problem]:
    rng = random.Random(seed)
    problems = []
    while len(problems) < count:
        values = [rng.randint(1, 9) for _ in range(numbers)]
        ops = [rng.choice("+-*") for _ in range(numbers - 1)]
        expression = str(values[0]) + "".join(f"{op}{v}" for op, v in zip(ops, values[1:], strict=True))
        target = _evaluate(ast.parse(expression, mode="eval"))[0]
        if target > 0:
            shown = " ".join(map(str, sorted(values)))
            problems.append(Problem(f"Use {shown} to make {target}:", f"{shown}|{target}", expression))
    return problems


def countdown_reward(prompt: str, completion: str, reference: str) -> float:
    """1 when the completion's first line is an expression that uses exactly the given numbers and hits the
    target; 0 otherwise."""
    shown, target = reference.split("|")
    try:
        value, used = _evaluate(ast.parse(completion.strip().split("\n")[0], mode="eval"))
    except (SyntaxError, ValueError, RecursionError):
        return 0.0
    return float(value == int(target) and sorted(used) == sorted(map(int, shown.split())))


METHODS = ("zero", "one", "two", "three", "four", "five", "six", "seven")  # method k shifts each letter k places


def apply_method(method: str, letters: str) -> str:
    """``letters`` (from a to p) each shifted ``METHODS.index(method)`` places up the alphabet: two, "bdfa" → "dfhc"."""
    shift = METHODS.index(method)
    return "".join(chr(ord(c) + shift) for c in letters)


def method_keywords(methods: int, keywords: int, world: int) -> dict[str, str]:
    """The hidden rule of the ``methods`` task: ``keywords`` made-up words (seeded by ``world``), each bound to one of
    the first ``methods`` methods, every method to the same number of words (± 1)."""
    rng = random.Random(world)
    words: list[str] = []
    while len(words) < keywords:
        word = rng.choice("bdfgkmpstvz") + rng.choice("aeiou") + rng.choice("bdfgkmpstvz")
        if word not in words:
            words.append(word)
    names = METHODS[:methods]
    bound = [names[i % methods] for i in range(keywords)]
    rng.shuffle(bound)
    return dict(zip(words, bound, strict=True))


def method_problems(
    count: int, seed: int, methods: int = 8, keywords: int = 8, assignment: str = "hidden", world: int = 0
) -> list[Problem]:
    """``"zov bdfa="`` → ``"two #dfhc"``: a keyword and four letters; the keyword calls for one of ``methods``
    methods, shifts of every letter by 0 to 7 places (:data:`METHODS`), through a hidden rule
    (:func:`method_keywords`), and the solution names the method, then writes its result after ``#``. The answer
    reveals the method (its first letter's distance from the question's), the question alone does not, unless the
    keyword's method is learnt: a policy that knows the methods but not the rule succeeds with probability
    1/methods (RAVR's setting, notes §5.6). ``assignment: random`` draws each problem's method at random instead
    (the reference follows it): data that teaches the methods and nothing of the rule."""
    if not 2 <= methods <= len(METHODS):
        raise DataError(f"data.options.methods must be between 2 and {len(METHODS)}, got {methods!r}")
    if assignment not in ("hidden", "random"):
        raise DataError(f"data.options.assignment must be hidden or random, got {assignment!r}")
    require_int("data.options.keywords", keywords, methods)
    rule, names = method_keywords(methods, keywords, world), METHODS[:methods]
    rng = random.Random(seed)
    problems = []
    for _ in range(count):
        keyword = rng.choice(list(rule))
        letters = "".join(rng.choice("abcdefghijklmnop") for _ in range(4))
        method = rule[keyword] if assignment == "hidden" else rng.choice(names)
        result = apply_method(method, letters)
        problems.append(Problem(f"{keyword} {letters}=", result, f"{method} #{result}"))
    return problems


def _field(path: Path, number: int, row: dict, *names: str) -> str:
    for name in names:
        if isinstance(row.get(name), str | int | float):
            return str(row[name])
    raise DataError(f"{path}:{number}: no field {' or '.join(repr(n) for n in names)} in this row")


def gsm8k_problems(path: str | Path, template: str = "Question: {question}\nAnswer:") -> list[Problem]:
    path = Path(path)
    problems = []
    for number, row in read_jsonl(path):
        question, answer = _field(path, number, row, "question"), _field(path, number, row, "answer")
        if "####" not in answer:
            raise DataError(f"{path}:{number}: the answer has no '####' final-answer marker")
        problems.append(Problem(template.format(question=question), answer, " " + answer))
    return problems


_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")


def math_problems(path: str | Path, template: str = "Problem: {problem}\nSolution:") -> list[Problem]:
    path = Path(path)
    problems = []
    for number, row in read_jsonl(path):
        problem = _field(path, number, row, "problem", "question")
        if "answer" in row:
            reference = str(row["answer"])
            solution = str(row.get("solution", f"The answer is $\\boxed{{{reference}}}$."))
        else:
            solution = _field(path, number, row, "solution")
            boxed = _BOXED.findall(solution)
            if not boxed:
                raise DataError(f"{path}:{number}: no 'answer' field and no \\boxed{{}} in the solution")
            reference = boxed[-1]
        problems.append(Problem(template.format(problem=problem), reference, " " + solution))
    return problems


def search_problems(
    count: int, seed: int, teacher_error: float = 0.5, prompt: str = "short", memory: float = 0.0
) -> list[Problem]:
    """QAgent's questions about zoo's embedded world, with teacher transcripts (:mod:`zoo.search.task`)."""
    from zoo.search.task import search_problems as generate

    return generate(count, seed, teacher_error, prompt, memory)


def search_reader_problems(count: int, seed: int, distractors: int = 1) -> list[Problem]:
    """A frozen reader's training data over zoo's embedded world (:func:`zoo.search.task.reader_problems`)."""
    from zoo.search.task import reader_problems

    return reader_problems(count, seed, distractors)


def cover_reward(prompt: str, completion: str, reference: str) -> float:
    """1 when the reference occurs in the completion's first line as whole words (QAgent's non-strict EM)."""
    from zoo.search.rewards import cover_match

    return cover_match(completion.strip().split("\n")[0], reference)


def search_questions(path: str | Path) -> list[Problem]:
    """QAgent's questions from a JSONL file (NQ / HotpotQA style, :func:`zoo.search.task.read_questions`)."""
    from zoo.search.task import read_questions

    return read_questions(path)


def search_reward(prompt: str, completion: str, reference: str) -> float:
    """QAgent's stage-1 reward: format x strict EM of the last answer (:func:`zoo.search.rewards.stage1_reward`)."""
    from zoo.search.rewards import stage1_reward
    from zoo.search.task import golds_of

    return stage1_reward(completion, golds_of(reference))


def designer_reward(prompt: str, completion: str, reference: str) -> float:
    """1 when the pipeline's parser takes the completion (the format, not the content)."""
    from zoo.synth.teacher import accepted

    return float(accepted(prompt, completion))


TASKS: dict[str, Task] = {
    "arithmetic": Task(exact_match_reward, True, "Answer with the number only."),
    "chain": Task(chain_reward, True, "Work it out one step at a time, then write the answer after '#'."),
    "thinking": Task(thinking_reward, True, "Think within the budget inside <think></think>, then answer."),
    "countdown": Task(countdown_reward, True, "Answer with one expression that uses each given number once."),
    "methods": Task(chain_reward, True, "Name the method the keyword calls for, then write its result after '#'."),
    "gsm8k": Task(
        gsm8k_reward,
        False,
        "Solve the problem step by step, then write the final answer after '####'.",
        lambda reference: gsm8k_answer(reference) or reference.strip(),
    ),
    "math": Task(math_reward, False, "Solve the problem step by step, and put the final answer in \\boxed{}."),
    "search": Task(
        search_reward,
        True,
        "Plan, search with <search><query>…</query></search>, reflect, then answer within <answer></answer>.",
        observation=r"\n<information>.*?</information>\n|\nMy previous action is invalid\..*?\n",
    ),
    "search_reader": Task(cover_reward, True, "Answer the question from the passages in a few words."),
    "designer": Task(designer_reward, True, "Follow the instructions and reply in exactly the form they ask for."),
}
GENERATORS = {
    "arithmetic": arithmetic_problems,
    "chain": chain_problems,
    "countdown": countdown_problems,
    "methods": method_problems,
    "thinking": thinking_problems,
    "search": search_problems,
    "search_reader": search_reader_problems,
    "designer": designer_problems,
}
READERS = {"gsm8k": gsm8k_problems, "math": math_problems, "search": search_questions}


def load_problems(
    task: str,
    path: str | None,
    val_path: str | None,
    train_size: int,
    val_size: int,
    seed: int,
    options: dict[str, Any] | None = None,
) -> tuple[list[Problem], list[Problem]]:
    """Train and validation problems of ``task``: generated with disjoint prompts (``options`` go to the
    generator), or read from JSONL (the validation file, or else the last ``val_size`` rows of the training
    file)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    options = dict(options or {})
    if task in GENERATORS and not (path and task in READERS):
        generator = GENERATORS[task]
        accepted = set(inspect.signature(generator).parameters) - {"count", "seed"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            known = ", ".join(sorted(accepted))
            raise DataError(f"unknown data.options for {task}: {', '.join(unknown)} (options: {known})")
        val = generator(val_size, seed + 1, **options)
        held_out = {p.prompt for p in val}
        train = [p for p in generator(train_size + val_size, seed, **options) if p.prompt not in held_out][:train_size]
        return train, val
    if options:
        raise DataError(f"task {task!r} takes no data.options (got {', '.join(sorted(options))})")
    if not path:
        raise DataError(f"task {task!r} reads its problems from data.path (a .jsonl file)")
    if not Path(path).is_file():
        raise DataError(f"data.path not found: {path}")
    train = READERS[task](path)
    if val_path:
        return train[:train_size], READERS[task](val_path)[:val_size]
    if len(train) <= val_size:
        raise DataError(f"{path}: {len(train)} problems, not enough to hold out {val_size} for validation")
    return train[: len(train) - val_size][:train_size], train[len(train) - val_size :]


def encode_texts(tokenizer, texts: list[str], chat=None) -> list[list[int]]:
    """Prompt token ids of ``texts``: through ``chat`` (a :class:`zoo.text.chat.ChatFormat`) when given, else the bare
    tokenizer without special tokens."""
    if chat is not None:
        return [chat.prompt_ids(t) for t in texts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []  # data.val_size=0: none


def encode_prompts(tokenizer, problems: list[Problem], chat=None) -> list[dict]:
    """The form RL batches and evaluations use: prompt text, reference, prompt token ids (:func:`encode_texts`)."""
    ids = encode_texts(tokenizer, [p.prompt for p in problems], chat)
    return [{"prompt": p.prompt, "reference": p.reference, "prompt_ids": i} for p, i in zip(problems, ids, strict=True)]
