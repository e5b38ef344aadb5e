"""The credit-assignment stage of the RL loop (``module.credit``): read the policy's attention over each rollout
sample, turn it into the signals of :mod:`zoo.rl.credit` and scale the batch's advantages by the strategy's γ.

``module.credit`` names the strategy (``none | local | global | coupled | random | entropy``);
``module.credit_options`` (:class:`CreditOptions`) holds its knobs, defaults from the paper (arXiv:2510.13554,
notes §1): γ_amp 1.5, q 0.4, W 10, FAI horizon [10, 100], 30% head groups, five layers evenly spaced in the
middle third, signed advantages (``scale_sign: both``, v2).

The attention pass: one no-grad forward of the policy per sample, over that sample's prompt and response only
(no padding), with a probe (:mod:`zoo.models.attention_maps`) that reduces each chosen layer's map to per-head
vectors at once (its span, WAAD and FAI: all linear in the map), so a pass holds one layer's (H, N, N) maps at a
time. The head groups are chosen once per batch from the heads' spans over all its response rows (the paper
does not say how often; the notes' reading), then each sample's WAAD is the mean of its local heads' and its FAI
the mean of its global heads'. The same forward's logits give the token entropies (at the rollout temperature)
for the ``entropy`` strategy and for the overlap that is logged. ``random`` and ``none`` need no pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import torch

from zoo.errors import ConfigError
from zoo.models.attention_maps import middle_layers
from zoo.rl.credit import (
    NEEDS,
    SIGNS,
    STRATEGIES,
    CreditSignals,
    credit_gammas,
    future_attention_influence,
    mean_attention_distance,
    shape_advantages,
    split_heads,
    top_fraction,
    windowed_attention_distance,
)
from zoo.rl.losses import token_entropy
from zoo.rl.rollout import RolloutBatch


@dataclass
class CreditOptions:
    gamma_amp: float = 1.5  # γ of a selected token
    q: float = 0.4  # TopQ: the share of a response's candidates selected
    scale_sign: str = "both"  # both (v2) | pos (v1: non-negative advantages only) | neg
    window: int = 10  # W of WAAD
    horizon: list[int] = field(default_factory=lambda: [10, 100])  # FAI's [H_lo, H_hi]
    head_fraction: float = 0.3  # the local and the global head groups: bottom and top fraction by span
    layers: list[int] | None = None  # attention calls read; null: five evenly spaced in the middle third
    tau_waad: float | str = "median"  # coupled: the WAAD at or below which an anchor is locally dominated
    tau_delta: float | str = "median"  # coupled: the jump Δ at or above which an anchor is locally dominated
    alpha: float = 0.5  # coupled: the share of a dominated anchor's bonus moved to its introducing token
    neighbourhood: int = 3  # coupled: k, how far back the introducing token may be
    add_local: bool = False  # coupled: also lift the local strategy's tokens to γ_amp

    @classmethod
    def from_dict(cls, values: dict | None) -> CreditOptions:
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown module.credit_options setting(s): {', '.join(unknown)}")
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"module.credit_options.{key} {why}, got {getattr(self, key)!r}")

        if not 0 <= self.q <= 1:
            raise bad("q", "must be in [0, 1]")
        if not 0 < self.head_fraction <= 0.5:
            raise bad("head_fraction", "must be in (0, 0.5]")
        if not 0 <= self.alpha <= 1:
            raise bad("alpha", "must be in [0, 1]")
        if self.scale_sign not in SIGNS:
            raise bad("scale_sign", f"must be one of {', '.join(SIGNS)}")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise bad("window", "must be an integer >= 1")
        if not (isinstance(self.neighbourhood, int) and self.neighbourhood >= 1):
            raise bad("neighbourhood", "must be an integer >= 1")
        horizon = list(self.horizon) if isinstance(self.horizon, list | tuple) else None
        if not horizon or len(horizon) != 2 or not all(isinstance(h, int) for h in horizon) or horizon[0] > horizon[1]:
            raise bad("horizon", "must be [H_lo, H_hi], integers with H_lo <= H_hi")
        self.horizon = horizon
        for key in ("tau_waad", "tau_delta"):
            value = getattr(self, key)
            if value != "median" and not isinstance(value, int | float):
                raise bad(key, "must be 'median' or a number")


class HeadReduction:
    """An attention probe for one sample: each map it is shown becomes, per head, its span over the response
    rows (the sum, for the batch-level split), its WAAD row vector and its FAI column vector."""

    def __init__(self, layers: list[int], rows: torch.Tensor, window: int, horizon: list[int]) -> None:
        self.layers = frozenset(layers)
        self.rows, self.window, self.horizon = rows, window, tuple(horizon)
        self.spans: list[torch.Tensor] = []
        self.waad: list[torch.Tensor] = []
        self.fai: list[torch.Tensor] = []
        self.fai_defined: torch.Tensor | None = None

    def observe(self, layer: int, probabilities: torch.Tensor) -> None:
        maps = probabilities[0]  # (H, N, N)
        self.spans.append(mean_attention_distance(maps, self.rows) * self.rows.sum())
        self.waad.append(windowed_attention_distance(maps, self.window))
        fai, self.fai_defined = future_attention_influence(maps, self.rows, self.horizon)
        self.fai.append(fai)


@dataclass
class CreditStats:
    amplified: float  # share of response tokens with γ > 1
    mean_gamma: float  # over response tokens
    entropy_overlap: float | None  # share of amplified tokens among the top-q entropy tokens
    pass_seconds: float  # the attention (or entropy) pass


class CreditAssignment:
    def __init__(self, strategy: str, options: dict | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown module.credit {strategy!r}; strategies: {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self.options = CreditOptions.from_dict(options)

    def layers(self, model: torch.nn.Module) -> list[int]:
        calls = model.num_attention_calls
        layers = self.options.layers if self.options.layers is not None else middle_layers(calls)
        if not layers or any(not isinstance(i, int) or not 0 <= i < calls for i in layers):
            raise ConfigError(f"module.credit_options.layers must be attention calls in [0, {calls}), got {layers!r}")
        return list(layers)

    @torch.no_grad()
    def signals(self, model: torch.nn.Module, batch: RolloutBatch, temperature: float) -> CreditSignals:
        """The signals of the strategy, over sequence positions (N, L + 1), from one pass per sample."""
        o = self.options
        size, width = batch.input_ids.shape
        rows = torch.zeros(size, width, dtype=torch.bool, device=batch.input_ids.device)
        rows[:, 1:] = batch.response_mask.bool()  # sequence position t + 1 holds target t
        needs = NEEDS[self.strategy]
        if not needs:
            return CreditSignals(rows)
        entropy = torch.zeros(size, width, device=rows.device)
        reductions = []
        layers = self.layers(model) if "maps" in needs else []
        was_training = model.training
        model.eval()
        try:
            for i in range(size):
                length = int(rows[i].nonzero().max()) + 1 if rows[i].any() else 1
                probe = HeadReduction(layers, rows[i, :length], o.window, o.horizon) if layers else None
                logits = model(batch.input_ids[i : i + 1, :length], attention_probe=probe)[0].float()
                if temperature not in (0, 1):
                    logits = logits / temperature
                entropy[i, 1:length] = token_entropy(logits[:-1])
                reductions.append(probe)
        finally:
            model.train(was_training)
        if not layers:
            return CreditSignals(rows, entropy=entropy)
        spans = torch.stack([torch.cat(r.spans) for r in reductions]).sum(0) / rows.sum().clamp(min=1)
        local, glob = split_heads(spans, o.head_fraction)
        waad, fai = torch.zeros(size, width, device=rows.device), torch.zeros(size, width, device=rows.device)
        defined = torch.zeros(size, width, dtype=torch.bool, device=rows.device)
        for i, r in enumerate(reductions):
            n = r.rows.shape[0]
            waad[i, :n] = torch.cat(r.waad)[local].mean(0)
            fai[i, :n] = torch.cat(r.fai)[glob].mean(0)
            defined[i, :n] = r.fai_defined
        return CreditSignals(rows, waad, fai, defined, entropy)

    def gammas(self, signals: CreditSignals, generator: torch.Generator | None = None) -> torch.Tensor:
        """γ over target positions (N, L)."""
        o = self.options
        gammas = credit_gammas(
            self.strategy, signals, o.q, o.gamma_amp, o.tau_waad, o.tau_delta, o.alpha, o.neighbourhood,
            o.add_local, generator,
        )  # fmt: skip
        return gammas[:, 1:]

    def __call__(
        self,
        model: torch.nn.Module,
        batch: RolloutBatch,
        temperature: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, CreditStats]:
        """The batch's advantages scaled by the strategy's γ, and what to log about it."""
        start = time.perf_counter()
        signals = self.signals(model, batch, temperature)
        gammas = self.gammas(signals, generator)
        seconds = time.perf_counter() - start
        mask = batch.response_mask.bool()
        amplified = (gammas > 1) & mask
        overlap = None
        if signals.entropy is not None and amplified.any():
            high = top_fraction(signals.entropy[:, 1:], mask, self.options.q)
            overlap = float((amplified & high).sum() / amplified.sum())
        stats = CreditStats(
            amplified=float(amplified.sum() / mask.sum().clamp(min=1)),
            mean_gamma=float((gammas * mask).sum() / mask.sum().clamp(min=1)),
            entropy_overlap=overlap,
            pass_seconds=seconds,
        )
        return shape_advantages(batch.advantages, gammas, self.options.scale_sign), stats
