"""Multi-turn environments for agentic RL (ROLL Flash, Lu et al. 2025, arXiv:2510.11345 §3.1: the environment
manager's loop; QAgent's search environment builds on this interface).

An environment serves one trajectory at a time:

- ``reset(problem) -> str``: the first observation, the text the policy's first turn answers (usually the
  problem's prompt, already in ``problem["prompt_ids"]``: then it returns "");
- ``step(action) -> Step``: the policy's turn (its decoded text) in, the environment's answer out: an
  ``observation`` appended to the context before the next turn (its tokens are masked out of the loss), the
  turn's ``reward``, and ``done``.

Environments run independently (:mod:`zoo.envs.agent_rollout`: each trajectory's loop has no barrier with the
others'); a step may block (a search call, a simulator), so the loop calls it on a worker thread. An environment
that raises ends its trajectory with reward 0, counted, never the training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Step:
    observation: str
    reward: float = 0.0
    done: bool = False


class Environment(Protocol):
    def reset(self, problem: dict[str, Any]) -> str: ...

    def step(self, action: str) -> Step: ...
