"""Multi-turn agents in RL training: the sampler the rollout callback runs under ``rollout.agent``.

Each step launches ``data.batch_size + extra_groups`` prompts (in the loader's seeded order) and rolls out
``group_size + redundancy`` trajectories of each with their environments (:func:`zoo.envs.agent_rollout.
run_agent_rollout`: environment-level asynchrony unless ``synchronous``), keeps the first ``data.batch_size``
complete groups of ``group_size`` (the module's ``rollout.n``), and trains them: the policy's turns are the
completion, the observations are masked out of the loss, and a trajectory's reward is the sum of its
environment's step rewards. Launched groups that were not kept are not trained (as ROLL's redundant
environments).

An environment class may declare ``stop_strings`` (every turn ends at them: the search environment's
``</search>``, ``</answer>``) and ``scored_by_module = True`` (its step rewards are ignored and the module scores
the decoded trajectories, observations included, as it scores single-turn completions: QAgent's rewards).

``rollout.agent`` settings: ``environment`` (``simulated``, ``search`` (:mod:`zoo.envs.search`), or the dotted path
of a class taking the settings in ``environment_options`` and ``seed``; it follows :mod:`zoo.envs`' interface),
``max_turns`` (4), ``max_context`` (tokens a trajectory may hold; default: the longest prompt + ``max_turns`` x
(``max_new_tokens`` + 32)), ``redundancy`` and ``extra_groups`` (0), ``synchronous`` (false), ``env_timeout_s`` (30:
a step past it ends its trajectory with reward 0). Options that do not fit the class are a one-line error when the
run is configured, a constructor that fails one at the first step. Logged under ``agent/``: turns per trajectory,
environment steps and their mean seconds, environment failures and timeouts (the first reason as a warning), aborted
trajectories, rollout seconds.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class

from zoo.envs.agent_rollout import run_agent_rollout
from zoo.envs.search import SearchEnvironment
from zoo.envs.simulated import SimulatedEnvironment
from zoo.errors import ConfigError, config_section, require_int
from zoo.generation.engine import GenerationResult
from zoo.rl.rewards import RewardBatch
from zoo.rl.rollout import Round
from zoo.rollout.samplers.base import Sampler
from zoo.text.loader import PromptStream

log = logging.getLogger("zoo")
ENVIRONMENTS = {"simulated": SimulatedEnvironment, "search": SearchEnvironment}


@dataclass
class AgentConfig:
    environment: str = "simulated"
    environment_options: dict[str, Any] = field(default_factory=dict)
    max_turns: int = 4
    max_context: int | None = None
    redundancy: int = 0
    extra_groups: int = 0
    synchronous: bool = False
    env_timeout_s: float = 30.0

    def environment_class(self):
        if self.environment in ENVIRONMENTS:
            return ENVIRONMENTS[self.environment]
        try:
            return get_class(self.environment)
        except Exception as error:
            raise ConfigError(
                f"rollout.agent.environment {self.environment!r} is neither one of {', '.join(ENVIRONMENTS)} nor "
                f"an importable class"
            ) from error

    def make_environment(self, problem: dict[str, Any], seed: int):
        environment = self.environment_class()
        try:
            return environment(**self.environment_options, seed=seed)
        except Exception as error:
            raise ConfigError(
                f"rollout.agent: {environment.__name__}(**{self.environment_options}) failed: {error}"
            ) from error

    def rollout(self, engine, problems: list[dict[str, Any]], params, tokenizer, group_size: int, num_groups: int):
        """Trajectories of ``problems`` (:func:`zoo.envs.agent_rollout.run_agent_rollout` with these settings);
        the first ``num_groups`` complete groups are kept. Turns also stop at the environment's stop strings."""
        stops = getattr(self.environment_class(), "stop_strings", ())
        params = replace(params, stop_strings=tuple(dict.fromkeys((*params.stop_strings, *stops))))
        longest = max(len(p["prompt_ids"]) for p in problems)
        return run_agent_rollout(
            engine,
            problems,
            self.make_environment,
            params,
            tokenizer,
            group_size,
            num_groups=num_groups,
            redundancy=self.redundancy,
            max_turns=self.max_turns,
            max_context=self.max_context or longest + self.max_turns * (params.max_new_tokens + 32),
            synchronous=self.synchronous,
            env_timeout_s=self.env_timeout_s,
        )


def agent_config(values: dict[str, Any]) -> AgentConfig:
    config = config_section(AgentConfig, values, "rollout.agent")
    require_int("rollout.agent.max_turns", config.max_turns, 1)
    require_int("rollout.agent.redundancy", config.redundancy, 0)
    require_int("rollout.agent.extra_groups", config.extra_groups, 0)
    if not config.env_timeout_s > 0:
        raise ConfigError(f"rollout.agent.env_timeout_s must be > 0, got {config.env_timeout_s!r}")
    environment = config.environment_class()  # named now, not at the first step
    try:
        inspect.signature(environment).bind(**config.environment_options, seed=0)
    except TypeError as error:
        raise ConfigError(f"rollout.agent.environment_options do not fit {environment.__name__}: {error}") from None
    return config


class AgentSampler(Sampler):
    def __init__(self, callback, trainer: L.Trainer) -> None:
        data = trainer.datamodule
        self.callback, self.config, self.problems = callback, callback.agent, data.train_set
        self.prompts_per_step = data.hparams.batch_size
        self.stream = PromptStream(len(self.problems), data.hparams.seed, trainer.global_rank, trainer.world_size)
        self.environment = self.config.environment_class()

    def next_round(self, module: L.LightningModule) -> Round:
        c = self.config
        launch = self.stream.take(self.prompts_per_step + c.extra_groups, self.prompts_per_step + c.extra_groups)
        problems = [self.problems[i] for i in launch]
        outcome = c.rollout(
            self.callback.engine,
            problems,
            module.sampling_params(),
            module.tokenizer,
            module.rollout_config.n,
            self.prompts_per_step,
        )
        kept = [problems[g] for g in outcome.groups]
        samples = outcome.samples()
        result = GenerationResult(samples, decode_steps=outcome.stats.decode_steps)
        result.generated_tokens = sum(sum(s.mask) for s in samples)
        step = Round.from_generation(kept, result, module.tokenizer, module.device)
        if not getattr(self.environment, "scored_by_module", False):
            step.rewards = RewardBatch(torch.tensor([t.reward for t in outcome.trajectories]))
        s = outcome.stats
        module.log_dict(
            {
                "agent/turns_mean": s.turns / max(len(outcome.trajectories), 1),
                "agent/env_steps": float(s.env_steps),
                "agent/env_step_s": s.env_seconds / max(s.env_steps, 1),
                "agent/env_failures": float(s.env_failures),
                "agent/env_timeouts": float(s.env_timeouts),
                "agent/aborted_trajectories": float(s.aborted_trajectories),
                "agent/rollout_s": s.seconds,
            }
        )
        if s.errors:
            log.warning("rollout.agent: %d environment steps failed, e.g. %s", s.env_failures, s.errors[0])
        self.callback.log_generation(module, result, s.seconds, "rollout")
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["stream"])
