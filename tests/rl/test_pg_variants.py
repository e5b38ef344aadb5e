"""The policy-gradient variants (zoo/rl/pg_variants.py) against hand-computed values and an element-by-element
Python implementation of each formula, loss and gradient; option checking."""

import math
import random

import pytest
import torch

from zoo.errors import ConfigError
from zoo.rl.pg_variants import PG_VARIANTS, PolicyInputs, policy_loss, variant_options


def _inputs(seed=0, B=4, T=6, spread=0.4):
    rng = random.Random(seed)

    def table(sigma):
        return torch.tensor([[rng.gauss(0, sigma) for _ in range(T)] for _ in range(B)], dtype=torch.float64)

    logprobs = (table(spread) - 1.0).requires_grad_()
    proximal, behaviour = logprobs.detach() + table(spread), logprobs.detach() + table(spread)
    advantages = table(1.0)
    scores = torch.tensor([1.0, 0.0, -0.5, 2.0][:B], dtype=torch.float64)
    mask = torch.tensor([[1] * T, [1] * (T - 2) + [0] * 2, [1, 1, 0, 0, 0, 0], [1] * T][:B], dtype=torch.float64)
    return PolicyInputs(logprobs, proximal, behaviour, advantages, scores, mask)


def _clipped(ratio, A, clip_low, clip_high):
    """PPO's clipped term −min(ratio·A, clip(ratio)·A) and its derivative in log π (ratio = π/π_other)."""
    clipped = min(max(ratio, 1 - clip_low), 1 + clip_high)
    return (-ratio * A, -ratio * A) if ratio * A <= clipped * A else (-clipped * A, 0.0)


def _reference(variant, options, x, clip_low, clip_high, tis_cap):
    """Per-token loss and its derivative in log π_θ, one token at a time, and which tokens stay in the loss."""
    B, T = x.mask.shape
    logprobs = x.logprobs.detach()
    loss, grad, keep = [[0.0] * T for _ in range(B)], [[0.0] * T for _ in range(B)], [[0.0] * T for _ in range(B)]
    for b in range(B):
        tokens = [t for t in range(T) if x.mask[b, t]]
        gap = [float(x.proximal[b, t] - x.behaviour[b, t]) for t in tokens]
        sequence_weight = {"sequence": math.exp(sum(gap)), "geometric": math.exp(sum(gap) / len(gap))}
        own = [float(logprobs[b, t] - x.proximal[b, t]) for t in tokens]
        sequence_ratio = math.exp(sum(own) / len(own))  # GSPO's s: the completion's length-normalised ratio
        for t in tokens:
            lp, A = float(logprobs[b, t]), float(x.advantages[b, t])
            r, rho = math.exp(lp - float(x.proximal[b, t])), math.exp(lp - float(x.behaviour[b, t]))
            kept = 1.0
            if variant in ("ppo", "decoupled_ppo"):
                value, slope = _clipped(r, A, clip_low, clip_high)
                if options.dual_clip is not None and A < 0 and value > -options.dual_clip * A:
                    value, slope = -options.dual_clip * A, 0.0
                w = math.exp(float(x.proximal[b, t] - x.behaviour[b, t]))
                if variant == "ppo":
                    w = min(w, tis_cap)
                else:
                    w = sequence_weight.get(options.level, w)
                    if options.filter is not None and not options.filter[0] <= w <= options.filter[1]:
                        kept = 0.0
                    w = min(w, options.cap)
                value, slope = value * w, slope * w
            elif variant == "gspo":  # s clipped as PPO clips r; d s_t / d log π_t = s
                value, slope = _clipped(sequence_ratio, A, clip_low, clip_high)
            elif variant in ("tis", "cispo", "topr"):
                if variant == "tis":
                    w = min(max(rho, options.low), options.high)
                elif variant == "cispo":
                    w = min(max(rho, 1 - clip_low), 1 + clip_high)
                    if options.unified_mask and ((A > 0 and rho > 1 + clip_high) or (A < 0 and rho < 1 - clip_low)):
                        kept = 0.0
                else:
                    positive = float(x.scores[b]) > 0
                    w = options.positive_weight if positive else options.negative_weight * min(rho, 1.0)
                value, slope = -w * A * lp, -w * A
            else:  # kimi15
                drift = lp - float(x.behaviour[b, t])
                value, slope = -A * lp + options.tau / 2 * drift**2, -A + options.tau * drift
            loss[b][t], grad[b][t], keep[b][t] = value, slope, kept
    f64 = torch.float64
    return torch.tensor(loss, dtype=f64), torch.tensor(grad, dtype=f64), torch.tensor(keep, dtype=f64)


CASES = [
    ("ppo", {}),
    ("ppo", {"dual_clip": 1.5}),
    ("decoupled_ppo", {}),
    ("decoupled_ppo", {"level": "sequence", "cap": 1.5}),
    ("decoupled_ppo", {"level": "geometric", "filter": [0.8, 1.2], "dual_clip": 2.0}),
    ("decoupled_ppo", {"level": "token", "filter": [0.7, 1.3]}),
    ("tis", {}),
    ("tis", {"low": 0.5, "high": 1.5}),
    ("cispo", {}),
    ("cispo", {"unified_mask": True}),
    ("topr", {}),
    ("topr", {"positive_weight": 0.5, "negative_weight": 2.0}),
    ("kimi15", {}),
    ("kimi15", {"tau": 0.5}),
    ("gspo", {}),
]


@pytest.mark.parametrize("variant,options", CASES)
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_loss_and_gradient_match_the_formula_token_by_token(variant, options, aggregation):
    parsed = variant_options(variant, options)
    for seed in range(3):
        x = _inputs(seed)
        loss, _, _ = policy_loss(variant, parsed, x, 0.2, 0.25, aggregation, max_length=8, tis_cap=1.3)
        loss.backward()
        per_token, slope, keep = _reference(variant, parsed, x, 0.2, 0.25, 1.3)
        mask = x.mask * keep  # a token left out adds zero and still counts in the denominators (CISPO's Σ|o_i|)
        if aggregation == "token_mean":
            weights = mask / x.mask.sum()
        elif aggregation == "seq_mean_token_mean":
            weights = mask / x.mask.sum(1, keepdim=True).clamp(min=1) / len(mask)
        else:
            weights = mask / 8 / len(mask)
        assert loss.item() == pytest.approx((per_token * weights).sum().item(), rel=1e-9, abs=1e-12)
        torch.testing.assert_close(x.logprobs.grad, slope * weights, rtol=1e-9, atol=1e-12)


def test_hand_computed_values():
    one = torch.zeros(1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)

    def run(variant, options, logprob, proximal, behaviour, advantage, score=1.0):
        x = PolicyInputs(
            torch.full((1, 1), math.log(logprob), dtype=torch.float64),
            one + math.log(proximal),
            one + math.log(behaviour),
            one + advantage,
            torch.tensor([score], dtype=torch.float64),
            mask,
        )
        return policy_loss(variant, variant_options(variant, options), x, 0.2, 0.2, tis_cap=2.0)[0].item()

    # ppo: r = 0.3/0.2 = 1.5 clipped to 1.2; weight min(0.2/0.1, 2) = 2 → −1.2·2
    assert run("ppo", {}, 0.3, 0.2, 0.1, 1.0) == pytest.approx(-2.4)
    # A < 0, r = 3: −min(−3, −1.2) = 3; dual clip 2 caps it at 2; weight min(1/0.5, 2) = 2
    assert run("ppo", {}, 0.6, 0.2, 0.1, -1.0) == pytest.approx(6.0)
    assert run("ppo", {"dual_clip": 2.0}, 0.6, 0.2, 0.1, -1.0) == pytest.approx(4.0)
    # decoupled: weight 2 capped at 1.2; filtered out when outside [0.8, 1.2]
    assert run("decoupled_ppo", {}, 0.3, 0.2, 0.1, 1.0) == pytest.approx(-1.2 * 1.2)
    assert run("decoupled_ppo", {"filter": [0.8, 1.2]}, 0.3, 0.2, 0.1, 1.0) == 0.0
    # tis: ρ = 0.3/0.1 = 3 truncated to 1: −A·log π
    assert run("tis", {}, 0.3, 0.2, 0.1, 1.0) == pytest.approx(-math.log(0.3))
    # cispo: ρ = 3 clipped to 1.2; the unified mask drops A > 0, ρ > 1.2
    assert run("cispo", {}, 0.3, 0.2, 0.1, 2.0) == pytest.approx(-1.2 * 2 * math.log(0.3))
    assert run("cispo", {"unified_mask": True}, 0.3, 0.2, 0.1, 2.0) == 0.0
    # topr: a rewarded completion is SFT-like; an unrewarded one truncated at 1: ρ = 0.05/0.1 = 0.5
    assert run("topr", {}, 0.05, 0.2, 0.1, 1.0, score=1.0) == pytest.approx(-math.log(0.05))
    assert run("topr", {}, 0.05, 0.2, 0.1, -1.0, score=0.0) == pytest.approx(0.5 * math.log(0.05))
    # kimi15: −A·log π + τ/2·(log π − log π_behav)²
    expected = -math.log(0.3) + 0.05 * math.log(3.0) ** 2
    assert run("kimi15", {}, 0.3, 0.2, 0.1, 1.0) == pytest.approx(expected)


def test_extreme_log_ratios_stay_finite():
    x = _inputs()
    x.behaviour[0, 0] = -1e4  # the sampler found the token nearly impossible
    x.proximal[1, 1] = 1e4
    for variant, options in CASES:
        loss, stats, _ = policy_loss(variant, variant_options(variant, options), x, tis_cap=2.0)
        assert torch.isfinite(loss) and torch.isfinite(stats.approx_kl), variant
        (grad,) = torch.autograd.grad(loss, x.logprobs)
        assert torch.isfinite(grad).all(), variant


def test_a_ratio_past_float32_on_a_zero_advantage_token_stays_finite():
    """A policy 90 nats above its proximal log-prob on a token whose advantage is 0, in float32: e^90 overflows, and
    without the clamp inf · 0 would make the loss NaN."""
    x = _inputs()
    logprobs = x.logprobs.detach().float().requires_grad_()
    proximal, behaviour, advantages = x.proximal.float(), x.behaviour.float(), x.advantages.float()
    proximal[0, 0], advantages[0, 0] = logprobs[0, 0].detach() - 90, 0.0
    x32 = PolicyInputs(logprobs, proximal, behaviour, advantages, x.scores.float(), x.mask.float())
    for variant, options in CASES:
        loss, _, _ = policy_loss(variant, variant_options(variant, options), x32, tis_cap=2.0)
        assert torch.isfinite(loss), variant


def test_on_policy_every_variant_is_the_policy_gradient():
    """Sampler, proximal and policy agree: every variant's gradient is −A/|tokens| per token (kimi15's penalty
    and every weight vanish), so they all train alike on fresh samples."""
    x = _inputs()
    x.proximal, x.behaviour = x.logprobs.detach().clone(), x.logprobs.detach().clone()
    x.scores = torch.ones(4, dtype=torch.float64)  # topr: every completion rewarded
    expected = -x.advantages * x.mask / x.mask.sum()
    for variant in PG_VARIANTS:
        loss, _, _ = policy_loss(variant, variant_options(variant, {}), x, tis_cap=2.0)
        (grad,) = torch.autograd.grad(loss, x.logprobs)
        torch.testing.assert_close(grad, expected, msg=variant)


@pytest.mark.parametrize(
    "variant,options,named",
    [
        ("nope", {}, "pg_variant 'nope'"),
        ("tis", {"cap": 2}, "cap"),
        ("ppo", {"dual_clip": 0.5}, "dual_clip"),
        ("decoupled_ppo", {"level": "segment"}, "level"),
        ("decoupled_ppo", {"filter": [1.2, 0.8]}, "filter"),
        ("tis", {"low": 2.0, "high": 1.0}, "low <= high"),
    ],
)
def test_bad_options_name_the_key(variant, options, named):
    with pytest.raises(ConfigError, match=named):
        variant_options(variant, options)


def test_gspo_is_the_papers_sequence_level_objective():
    """Zheng et al. 2025, eq. 5-7: J = 1/G Σ_i min(s_i·A_i, clip(s_i, 1 − ε_low, 1 + ε_high)·A_i) with
    s_i = exp(1/|y_i| Σ_t log(π_θ/π_old)), differentiated through s_i itself; the per-token form under
    seq_mean_token_mean gives its value and gradient (ε as the paper's, 3e-4 / 4e-4, and wider)."""
    for clip_low, clip_high in ((3e-4, 4e-4), (0.2, 0.28)):
        for seed in range(3):
            x = _inputs(seed)
            per_sequence = torch.tensor([1.5, -0.7, 0.3, -2.0], dtype=torch.float64)
            x.advantages = per_sequence[:, None].expand_as(x.logprobs).clone()
            loss, _, logs = policy_loss("gspo", variant_options("gspo", {}), x, clip_low, clip_high,
                                        "seq_mean_token_mean")  # fmt: skip
            (grad,) = torch.autograd.grad(loss, x.logprobs)
            s = torch.exp(((x.logprobs - x.proximal) * x.mask).sum(1) / x.mask.sum(1))
            objective = torch.minimum(s * per_sequence, s.clamp(1 - clip_low, 1 + clip_high) * per_sequence).mean()
            (expected_grad,) = torch.autograd.grad(-objective, x.logprobs)
            assert loss.item() == pytest.approx(-objective.item(), rel=1e-12, abs=1e-12)
            torch.testing.assert_close(grad * x.mask, expected_grad * x.mask, rtol=1e-10, atol=1e-12)
            tokens = x.mask.sum()
            assert logs["policy/sequence_ratio"].item() == pytest.approx((s[:, None] * x.mask).sum().item() / tokens)
