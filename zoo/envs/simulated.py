"""A simulated environment with configurable latency (ROLL Flash's agentic benchmark: step latency with mean =
std = 10 s; scaled here to milliseconds), for tests and benchmarks of multi-turn rollout.

Each step sleeps ``max(0, normal(latency_mean, latency_std))`` seconds (drawn from the environment's own seeded
stream), answers with ``observation`` and ends the trajectory after ``turns`` steps. Its reward is the share of
the policy's turns that contained ``target`` (a string the policy can learn to say), given at the last step.
"""

from __future__ import annotations

import random
import time
from typing import Any

from zoo.envs import Step


class SimulatedEnvironment:
    def __init__(
        self,
        latency_mean: float = 0.01,
        latency_std: float = 0.01,
        turns: int = 3,
        observation: str = " ok",
        target: str = "1",
        seed: int = 0,
    ) -> None:
        if turns < 1:
            raise ValueError(f"turns must be >= 1, got {turns}")
        self.latency_mean, self.latency_std, self.turns = latency_mean, latency_std, turns
        self.observation, self.target = observation, target
        self.rng = random.Random(seed)
        self.taken = self.hits = 0

    def reset(self, problem: dict[str, Any]) -> str:
        self.taken = self.hits = 0
        return ""

    def latency(self) -> float:
        return max(0.0, self.rng.gauss(self.latency_mean, self.latency_std))

    def step(self, action: str) -> Step:
        time.sleep(self.latency())
        self.taken += 1
        self.hits += self.target in action
        done = self.taken >= self.turns
        return Step(self.observation, self.hits / self.turns if done else 0.0, done)
