"""The RL math every RL module shares, in four stages that are tested one by one: rollout data
(:mod:`zoo.rl.rollout`), rewards (:mod:`zoo.rl.rewards`), advantages (:mod:`zoo.rl.advantages`) and policy /
value losses (:mod:`zoo.rl.losses`). Pure functions on tensors, no Lightning."""
