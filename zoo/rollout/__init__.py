"""The RL rollout system: the callback that owns an engine's lifecycle and weight sync (:mod:`.callback`), the
samplers that decide what each training step gets (:mod:`.samplers`: tail batching, queue scheduling, asynchronous
rollout, agent trajectories) and the workers that generate away from the trainer (:mod:`.workers`: the sample
buffer, thread / process / Ray workers, the engine server, the environment simulator)."""
