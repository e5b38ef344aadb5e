"""Prompts and supervised examples through a tokenizer's chat template (``data.chat_template: auto | none``).

With ``auto`` and a tokenizer that has a chat template (an instruct or chat model's), a task's prompt becomes the
user turn of a conversation that opens with the task's system prompt, rendered with the generation prompt
(what the policy continues); a supervised example is that conversation with the solution as the assistant turn.
With ``none``, or a tokenizer without a template (zoo's own BPE), prompts are the task's raw text.

- The rendered text is tokenized without added special tokens: the template writes its own (BOS and all).
- The assistant turn ends at the template's end-of-turn token (the first special token the template puts after
  the assistant's text, e.g. ``<|im_end|>``); the example stops there and that token is the last target, so SFT
  teaches the policy to end its turn, and generation stops on it (:attr:`ChatFormat.stop_token_ids`, with EOS).
- Only the assistant turn is learned: every target before it is -100 (the rendered prompt must be a prefix of
  the rendered conversation, as it is for every template that renders turns in order; otherwise one line
  names the problem).

Choices where the template is silent: a template without a special token after the assistant's text ends the
example with EOS; a system prompt the template rejects is an error naming the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo.errors import DataError
from zoo.models.cross_entropy import IGNORE_INDEX as IGNORE

CHAT_TEMPLATE_MODES = ("auto", "none")


@dataclass
class ChatFormat:
    tokenizer: Any
    system: str | None

    def __post_init__(self) -> None:
        rendered = self._render("x", "y")
        prefix = self._render("x")
        special = set(self.tokenizer.all_special_ids) | set(self.tokenizer.added_tokens_decoder)
        turn = rendered[len(prefix) :]
        self.end_of_turn = next((t for t in turn if t in special), None)

    def _messages(self, prompt: str, answer: str | None = None) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": prompt})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return messages

    def _render(self, prompt: str, answer: str | None = None) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                self._messages(prompt, answer), tokenize=False, add_generation_prompt=answer is None
            )
        except Exception as e:  # a jinja error raised by the template (e.g. no system role)
            raise DataError(f"the tokenizer's chat template fails on this task's messages: {e}") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        return self._render(prompt)

    def example(self, prompt: str, solution: str) -> tuple[list[int], list[int]]:
        """(tokens, labels) of one conversation: labels are -100 outside the assistant turn."""
        prefix, whole = self._render(prompt), self._render(prompt, solution.strip())
        if whole[: len(prefix)] != prefix:
            raise DataError(
                f"the chat template renders the prompt {prompt[:40]!r} differently with an answer than without: "
                "use data.chat_template=none"
            )
        turn = whole[len(prefix) :]
        if self.end_of_turn is not None and self.end_of_turn in turn:
            turn = turn[: turn.index(self.end_of_turn) + 1]
        else:
            turn = turn + [self.tokenizer.eos_token_id]
        return prefix + turn, [IGNORE] * len(prefix) + turn

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        ids = [self.tokenizer.eos_token_id, self.end_of_turn]
        return tuple(dict.fromkeys(i for i in ids if i is not None))


def chat_format(tokenizer: Any, mode: str, system: str | None) -> ChatFormat | None:
    """The chat format ``mode`` asks for with ``tokenizer``, or None for raw prompts."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise DataError(f"data.chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {mode!r}")
    if mode == "none" or not getattr(tokenizer, "chat_template", None):
        return None
    return ChatFormat(tokenizer, system)
