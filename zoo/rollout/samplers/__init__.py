"""What a training step gets from the engine: tail batching (RollPacker), queue scheduling and asynchronous
rollout (ROLL Flash), and multi-turn agent trajectories."""
