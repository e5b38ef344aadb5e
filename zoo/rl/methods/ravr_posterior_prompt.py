"""RAVR's answer-conditioned prompt (arXiv:2510.25206; notes §5.3 item 4): the question together with its
reference answer, worded so that the path the policy samples there reads as its own reasoning ("think aloud"),
not as a copy of the answer. The paper's templates are not published; ``data.posterior_prompt`` is a template
with the fields ``{prompt}`` and ``{answer}`` (:data:`THINK_ALOUD` for instruction-following models; a tiny model
trained from scratch needs only a short marker it learns, e.g. ``"answer {answer}: {prompt}"``). Through a chat
template it becomes the user's turn, as a question-only prompt does.
"""

from __future__ import annotations

import string

from zoo.errors import ConfigError

THINK_ALOUD = (
    "{prompt}\n\n(You already know that the correct final answer is {answer}. Work towards it step by step as if "
    "you were solving the problem yourself for the first time; do not mention that you were given the answer.)"
)
_FIELDS = {"prompt", "answer"}


def check_template(template: str) -> str:
    """``template`` if it has exactly the fields {prompt} and {answer} (each at least once); else a ConfigError."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ConfigError(f"data.posterior_prompt is not a valid template ({e}): {template!r}") from None
    if fields != _FIELDS:
        raise ConfigError(
            f"data.posterior_prompt needs the fields {{prompt}} and {{answer}} only, got {sorted(fields)}"
        )
    return template


def posterior_prompt(template: str, prompt: str, answer: str) -> str:
    return template.format(prompt=prompt, answer=answer)
