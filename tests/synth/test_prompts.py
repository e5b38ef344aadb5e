"""Design-logic flowcharts and the stages' answer parsers, on hand-written answers."""

import pytest

from zoo.synth import prompts
from zoo.synth.mermaid import MalformedLogic, parse_flowchart

FENCED = """Here is how the examiner built it.
```mermaid
flowchart TD
    A[Select a foundational concept] --> B(Identify knowledge points)
    B --> C{"Design cognitive layers"}
    C -- check --> D([Quality control])
```
That is all."""


def test_a_fenced_flowchart_reads_into_steps_in_order():
    chart = parse_flowchart(FENCED)
    assert chart.steps() == [
        "Select a foundational concept",
        "Identify knowledge points",
        "Design cognitive layers",
        "Quality control",
    ]
    assert chart.edges == (("A", "B"), ("B", "C"), ("C", "D"))
    assert parse_flowchart(chart.text()) == chart  # the canonical text reads back the same


def test_chains_edge_labels_semicolons_comments_and_bare_headers():
    chart = parse_flowchart(
        "graph LR\n%% a comment\nA[one] -->|then| B[two] --> C[three]; C ==> D[four]\nstyle A fill:#fff\n"
    )
    assert chart.steps() == ["one", "two", "three", "four"]
    assert len(chart.edges) == 3


def test_branches_are_ordered_breadth_first():
    chart = parse_flowchart("flowchart TD\nA[root] --> B[left]\nA --> C[right]\nB --> D[end]\nC --> D")
    assert chart.steps() == ["root", "left", "right", "end"]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("A[one] --> B[two] --> C[three]", "header"),
        ("flowchart TD\nA[one] --> B[two]", "fewer than 3"),
        ("flowchart TD\nA[one]\nB[two]\nC[three]", "no edges"),
        ("flowchart TD\nA[one] --> B[two] --> C[three]\nthis is prose, not a statement", "cannot read"),
        ("flowchart TD\nA[one] --> B[two] --> C[three] --> A", "cannot be reached"),
    ],
)
def test_malformed_flowcharts_are_refused_with_the_reason(text, reason):
    with pytest.raises(MalformedLogic, match=reason):
        parse_flowchart(text)


def test_annotations_match_the_taxonomy_case_insensitively():
    text = "Discipline: Mathematics\n**Difficulty**: very hard\nType: Calculation."
    a = prompts.parse_annotation(text, ["mathematics", "physics"], ["calculation", "proof"])
    assert (a.discipline, a.difficulty, a.type) == ("mathematics", "Very Hard", "calculation")
    with pytest.raises(prompts.Malformed, match="not one of"):
        prompts.parse_annotation(text.replace("Mathematics", "astrology"), ["mathematics"], ["calculation"])
    with pytest.raises(prompts.Malformed, match="no 'Type:' line"):
        prompts.parse_annotation("Discipline: mathematics\nDifficulty: Hard", ["mathematics"], ["calculation"])


def test_generated_questions_name_a_candidate_and_carry_question_and_answer():
    g = prompts.parse_generated("Logic: [2]\nQuestion: What is 2+2?\nIt matters.\nAnswer: 4", 5)
    assert (g.choice, g.question, g.answer) == (1, "What is 2+2?\nIt matters.", "4")
    with pytest.raises(prompts.Malformed, match="not one of the 5"):
        prompts.parse_generated("Logic: 6\nQuestion: q\nAnswer: a", 5)
    with pytest.raises(prompts.Malformed, match="form"):
        prompts.parse_generated("Question: q\nAnswer: a", 5)


def test_long_answers_split_thinking_from_answer():
    assert prompts.parse_long_answer("<think>\nstep 1\n</think>\n\n42") == ("step 1", "42")
    assert prompts.parse_long_answer("step 1 (the template opened the tag)</think> 42")[1] == "42"
    for bad in ("<think>no end", "<think>x</think>", "<think></think>42"):
        with pytest.raises(prompts.Malformed):
            prompts.parse_long_answer(bad)


def test_the_generation_prompt_lists_every_candidate_logic_numbered():
    prompt = prompts.generate_prompt("Some source.", ["flowchart TD\n A --> B", "flowchart TD\n C --> D"])
    assert "Source text:\nSome source." in prompt
    assert "[1]\n```mermaid\nflowchart TD\n A --> B\n```" in prompt and "[2]\n```mermaid" in prompt
