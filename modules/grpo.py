"""GRPO (Shao et al. 2024, DeepSeekMath): the RL base loop with group-normalised advantages and no critic.

Defaults follow the paper where it states them: G completions per prompt, advantages ``(r − mean_g) /
std_g``, the PPO-clip objective with ε = 0.2, KL to the reference through the k3 estimator added to the loss.
zoo's defaults differ in two places, both switchable: the loss averages over all response tokens of the batch
(``token_mean``, DAPO) instead of per sequence (``aggregation: seq_mean_token_mean`` restores the paper), and
the KL coefficient is 0 (the paper uses 0.04), as most recent recipes (DAPO, Dr. GRPO) drop it.
"""

from __future__ import annotations

from zoo.modules.rl import RLModule


class GRPOModule(RLModule):
    """Group-normalised advantages; the base module's every other stage."""
