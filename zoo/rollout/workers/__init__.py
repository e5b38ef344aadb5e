"""Generation away from the trainer: the versioned sample buffer, rollout workers in a thread, a process or Ray
actors, the engine server a process worker runs, and the simulator of asynchronous schedules."""
