"""QAgent's search environment (arXiv:2510.08383 Algorithm 1; notes §5.1): the agent's turns in, retrieved
passages out.

Each turn of the agent ends at ``</search>`` or ``</answer>`` (:data:`zoo.search.tags.STOP_STRINGS`, which the
sampler gives every engine). A turn with an answer ends the trajectory; a turn with a search gets the top ``top_k``
passages of each of its first ``max_queries`` queries (BM25, :mod:`zoo.search.retriever`) in one
``<information>`` block; any other turn gets the retry message. The observations are masked out of the loss (the
rollout masks every environment token). ``max_turns`` (``rollout.agent.max_turns``, default 5 as in the authors'
code) bounds the actions.

The environment gives no reward: the QAgent module scores whole trajectories (stage 1 or 2,
:mod:`zoo.search.rewards`), which needs the frozen reader batched over the rollout. It counts its searches,
queries and invalid turns (:attr:`SearchEnvironment.counts`).
"""

from __future__ import annotations

from typing import Any

from zoo.envs import Step
from zoo.errors import ConfigError
from zoo.search.retriever import retriever_for
from zoo.search.tags import RETRY, STOP_STRINGS, information_block, parse_action


class SearchEnvironment:
    stop_strings = STOP_STRINGS
    scored_by_module = True

    def __init__(self, corpus: str = "world", top_k: int = 1, max_queries: int = 3, seed: int = 0) -> None:
        if top_k < 1 or max_queries < 1:
            raise ConfigError(f"top_k and max_queries must be >= 1, got {top_k} and {max_queries}")
        self.retriever = retriever_for(corpus)
        self.top_k, self.max_queries = top_k, max_queries
        self.counts = {"searches": 0, "queries": 0, "invalid": 0}

    def reset(self, problem: dict[str, Any]) -> str:
        self.counts = dict.fromkeys(self.counts, 0)
        return ""

    def step(self, action: str) -> Step:
        parsed = parse_action(action, self.max_queries)
        if parsed.kind == "answer":
            return Step("", done=True)
        if parsed.kind == "invalid":
            self.counts["invalid"] += 1
            return Step(RETRY)
        self.counts["searches"] += 1
        self.counts["queries"] += len(parsed.queries)
        found = [p for hits in self.retriever.search(list(parsed.queries), self.top_k) for p in hits]
        return Step(information_block(found))
