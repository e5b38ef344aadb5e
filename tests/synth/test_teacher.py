"""The template teacher that an offline writer model learns the pipeline's formats from (data.task=designer)."""

from collections import Counter

from zoo.synth.teacher import accepted, kind_of
from zoo.tasks.registry import TASKS, load_problems


def test_every_teacher_answer_passes_the_pipelines_own_parser_and_nothing_else_does():
    train, val = load_problems("designer", None, None, 40, 8, seed=3, options={"max_words": 40})
    assert len(train) == 40 and len(val) == 8
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    assert Counter(kind_of(p.prompt) for p in train) == {"annotate": 10, "extract": 10, "generate": 10, "answer": 10}
    reward = TASKS["designer"].reward
    for problem in train + val:
        assert accepted(problem.prompt, problem.solution), problem.prompt[:200]
        assert reward(problem.prompt, problem.solution, problem.reference) == 1.0
        assert reward(problem.prompt, "I cannot do that.", problem.reference) == 0.0


def test_the_teacher_chooses_the_logic_that_shares_the_most_words_with_the_source():
    from zoo.synth import prompts
    from zoo.synth.teacher import teacher_answer

    logics = ["flowchart TD\n A[apples] --> B[pears]", "flowchart TD\n A[copper wire] --> B[silver coins]"]
    answer = teacher_answer(prompts.generate_prompt("Copper and silver coins were minted in the city.", logics))
    assert prompts.parse_generated(answer, 2).choice == 1
