"""The RL math every RL module shares, in four stages that are tested one by one: rollout data
(:mod:`zoo.rl.rollout`), rewards (:mod:`zoo.rl.rewards`), advantages (:mod:`zoo.rl.advantages`) and policy /
value losses (:mod:`zoo.rl.losses`), and what methods add to them: attention-based credit (:mod:`zoo.rl.credit`,
run by :mod:`zoo.rl.attention_credit`), critic ensembles (:mod:`zoo.rl.critic_ensemble`), queue scheduling
(:mod:`zoo.rl.queue`). Pure functions on tensors where they can be, no Lightning."""
