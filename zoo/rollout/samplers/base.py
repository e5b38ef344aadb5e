"""The sampler seam, written down: what decides the prompts a training step trains and produces its round, when
that is more than the training loader's batch sent through the engine once.

Samplers: tail batching (:class:`zoo.rollout.samplers.tail_batching.TailBatching`, a callback of its own), and the
rollout callback's own: queue scheduling (:class:`zoo.rollout.samplers.queue.QueueSampler`), asynchronous rollout
(:class:`zoo.rollout.samplers.asynchronous.AsyncSampler`) and multi-turn agents
(:class:`zoo.rollout.samplers.agent.AgentSampler`). Each inherits :class:`Sampler`; the RL module finds one by
that type. Its state is part of the checkpoint, so a resumed run draws the prompts the original would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import lightning as L

    from zoo.rl.rollout import Round


@runtime_checkable
class Sampler(Protocol):
    def next_round(self, module: L.LightningModule) -> Round:
        """The round the module's next step trains: its prompts chosen, generated (through the module's rollout
        callback and engine) and scored where the schedule scores as it goes."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs to continue the same prompt order and queues."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
