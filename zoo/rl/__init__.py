"""The RL math every RL module shares, in four stages that are tested one by one: rollout data
(:mod:`zoo.rl.rollout`), rewards (:mod:`zoo.rl.rewards`), advantages (:mod:`zoo.rl.advantages`) and policy /
value losses (:mod:`zoo.rl.losses`, :mod:`zoo.rl.pg_variants`), and evaluation (:mod:`zoo.rl.evaluation`). What
one method adds lives under its own name in :mod:`zoo.rl.methods`; the system that produces rollouts (engines'
lifecycle, samplers, workers) in :mod:`zoo.rollout`. Pure functions on tensors where they can be, no Lightning."""
