"""The credit-assignment stage of the RL loop (``module.credit``): read the policy's attention over each rollout
sample, turn it into the signals of :mod:`zoo.rl.methods.credit` and scale the batch's advantages by the strategy's γ.

``module.credit`` names the strategy (``none | local | global | coupled | random | entropy``);
``module.credit_options`` (:class:`CreditOptions`) holds its knobs, defaults from the paper (arXiv:2510.13554,
notes §1): γ_amp 1.5, q 0.4, W 10, FAI horizon [10, 100], 30% head groups, five layers evenly spaced in the
middle third, signed advantages (``scale_sign: both``, v2).

The attention pass: no-grad forwards of the policy over the samples' prompts and responses, with a probe
(:mod:`zoo.models.attention_maps`) that reduces each chosen layer's maps to per-head vectors at once (span, WAAD
and FAI: all linear in the map), a chunk of heads at a time, so a pass holds one chunk's maps at a time; no other
layer computes a map (a Hugging Face policy keeps its attention implementation; only the probed layers' calls also
compute their maps). ``map_budget_mb`` bounds what the maps hold, every copy counted (``MAP_COPIES`` fp32 maps while
one is computed and reduced, B·h·N²·4 bytes each): samples go through in groups of similar length whose one-head
maps fit it, their heads in chunks that fit it (a sample whose one head alone exceeds it goes alone): the
rows are right-padded, and causal attention keeps every real token's row exactly what it is alone (padding keys
come after every real query), so grouping changes nothing but float rounding (``map_budget_mb: 0`` passes one
sample and one head at a time). The head groups are chosen per sequence, from that response's rows, as Eq. 7
defines the span (the paper does not say how often they are chosen); each sample's WAAD is then the mean of its
local heads', its FAI the mean of its global heads'. The same forward gives the token entropies (at the rollout
temperature; zoo's models through their head a chunk of tokens at a time, never the full-vocabulary logits) for
the ``entropy`` strategy and for the overlap that is logged (``entropy_overlap: false`` skips the head where the
strategy needs no entropy). ``none`` needs no pass; ``random`` needs the pass of the strategy it is matched to
(``control_for``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from zoo.errors import ConfigError, config_section
from zoo.models.attention_maps import MAP_COPIES, middle_layers
from zoo.rl.methods.credit import (
    CONTROLLED,
    SIGNS,
    STRATEGIES,
    CreditSignals,
    credit_gammas,
    future_attention_influence,
    mean_attention_distance,
    shape_advantages,
    signals_needed,
    split_heads,
    top_fraction,
    windowed_attention_distance,
)
from zoo.rl.rollout import RolloutBatch, position_outputs, token_logprobs


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
    control_for: str = "coupled"  # random: the strategy whose γ it shuffles (same count and weight per sequence)
    map_budget_mb: float = 256.0  # attention maps held at once, every copy counted; samples grouped, heads chunked
    entropy_overlap: bool = True  # log the amplified tokens' overlap with the high-entropy ones (needs the head)

    @classmethod
    def from_dict(cls, values: dict | None) -> CreditOptions:
        options = config_section(cls, values, "module.credit_options")
        options.validate()
        return options

    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"module.credit_options.{key} {why}, got {getattr(self, key)!r}")

        if not self.gamma_amp > 0:
            raise bad("gamma_amp", "must be > 0")
        if not 0 <= self.q <= 1:
            raise bad("q", "must be in [0, 1]")
        if not 0 < self.head_fraction <= 0.5:
            raise bad("head_fraction", "must be in (0, 0.5]")
        if not 0 <= self.alpha <= 1:
            raise bad("alpha", "must be in [0, 1]")
        if self.scale_sign not in SIGNS:
            raise bad("scale_sign", f"must be one of {', '.join(SIGNS)}")
        if self.control_for not in CONTROLLED:
            raise bad("control_for", f"must be one of {', '.join(CONTROLLED)}")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise bad("window", "must be an integer >= 1")
        if not self.map_budget_mb >= 0:
            raise bad("map_budget_mb", "must be >= 0")
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
    """An attention probe for a group of right-padded samples (their response ``rows``, (B, N)): each map it is
    shown becomes, per sample and head, the head's span over the sample's response rows, its WAAD (per row) and
    its FAI (per key); :meth:`signals` averages them over each sample's local and global heads."""

    def __init__(
        self, layers: list[int], rows: torch.Tensor, window: int, horizon: list[int], heads_per_map: int | None = None
    ) -> None:
        self.layers = frozenset(layers)
        self.heads_per_map = heads_per_map  # maps computed and reduced this many heads at a time (None: all)
        self.rows, self.window, self.horizon = rows[:, None, :], window, tuple(horizon)  # (B, 1, N) against heads
        self.spans: list[torch.Tensor] = []  # (B, H) per layer
        self.waad: list[torch.Tensor] = []  # (B, H, N) per layer
        self.fai: list[torch.Tensor] = []
        self.fai_defined: torch.Tensor | None = None

    def observe(self, layer: int, probabilities: torch.Tensor) -> None:
        self.spans.append(mean_attention_distance(probabilities, self.rows))
        self.waad.append(windowed_attention_distance(probabilities, self.window))
        fai, defined = future_attention_influence(probabilities, self.rows, self.horizon)
        self.fai.append(fai)
        self.fai_defined = defined[:, 0]

    def signals(self, head_fraction: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """WAAD of each sample's local heads, FAI of its global heads, where FAI is defined; (B, N) each."""
        spans, waad, fai = torch.cat(self.spans, 1), torch.cat(self.waad, 1), torch.cat(self.fai, 1)
        local_waad, global_fai = [], []
        for i in range(spans.shape[0]):
            local, glob = split_heads(spans[i], head_fraction)
            local_waad.append(waad[i, local].mean(0))
            global_fai.append(fai[i, glob].mean(0))
        return torch.stack(local_waad), torch.stack(global_fai), self.fai_defined


def map_bytes(samples: int, heads: int, length: int) -> int:
    """What computing and reducing ``heads`` heads' maps of ``samples`` samples of ``length`` tokens holds at once:
    ``MAP_COPIES`` fp32 tensors of B·h·N² (:mod:`zoo.models.attention_maps`)."""
    return MAP_COPIES * samples * heads * length**2 * 4


def pass_groups(
    lengths: list[int], budget_bytes: float, size: int | None = None, tokens: int | None = None
) -> list[list[int]]:
    """Sample indices grouped for the attention pass: longest first, each group's maps of one head within the
    budget (:func:`map_bytes`, N its longest sample; a sample alone over it is a group of its own), and within the
    RL module's micro-batches: at most ``size`` samples and ``tokens`` tokens (samples x N)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        count = len(groups[-1]) + 1 if groups else 0
        longest = lengths[groups[-1][0]] if groups else 0
        fits = (
            groups
            and map_bytes(count, 1, longest) <= budget_bytes
            and (size is None or count <= size)
            and (tokens is None or count * longest <= tokens)
        )
        if fits:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def heads_per_map(samples: int, length: int, heads: int, budget_bytes: float) -> int:
    """Heads whose maps fit the budget together (at least one)."""
    return max(1, min(heads, int(budget_bytes // map_bytes(samples, 1, length))))


def attention_heads(model: torch.nn.Module) -> int:
    """The query heads of each attention call (a Hugging Face model's text config says)."""
    config = model.hf.config if hasattr(model, "hf") else model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return config.num_attention_heads


def probed_pass(
    model: torch.nn.Module, input_ids: torch.Tensor, probe, temperature: float, with_entropy: bool
) -> torch.Tensor | None:
    """One forward over ``input_ids`` (B, T) that shows ``probe`` its maps, and with ``with_entropy`` the entropy
    (B, T - 1) of the next-token distribution at each position but the last (zoo's models through their head a
    chunk of tokens at a time, :func:`zoo.rl.rollout.token_logprobs`, never the (B, T, V) fp32 logits)."""
    outputs = position_outputs(model)(input_ids, attention_probe=probe)
    if not with_entropy:
        return None
    return token_logprobs(model, input_ids, temperature, with_entropy=True, outputs=outputs[:, :-1])[1]


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
    def signals(
        self,
        model: torch.nn.Module,
        batch: RolloutBatch,
        temperature: float,
        size: int | None = None,
        tokens: int | None = None,
    ) -> CreditSignals:
        """The signals of the strategy, over sequence positions (N, L + 1); the pass's forwards hold at most
        ``size`` samples and ``tokens`` tokens (the RL module's micro-batches) as well as ``map_budget_mb``."""
        o = self.options
        samples, width = batch.input_ids.shape
        rows = torch.zeros(samples, width, dtype=torch.bool, device=batch.input_ids.device)
        rows[:, 1:] = batch.response_mask.bool()  # sequence position t + 1 holds target t
        needs = signals_needed(self.strategy, self.options.control_for)
        if not needs:
            return CreditSignals(rows)
        with_entropy = "entropy" in needs or o.entropy_overlap
        entropy = torch.zeros(samples, width, device=rows.device)
        waad, fai = torch.zeros(samples, width, device=rows.device), torch.zeros(samples, width, device=rows.device)
        defined = torch.zeros(samples, width, dtype=torch.bool, device=rows.device)
        layers = self.layers(model) if "maps" in needs else []
        lengths = [int(r.nonzero().max()) + 1 if r.any() else 1 for r in rows]
        budget, heads = o.map_budget_mb * 2**20, attention_heads(model)
        was_training = model.training
        model.eval()
        try:
            for group in pass_groups(lengths, budget, size, tokens):
                n = lengths[group[0]]
                probe = None
                if layers:
                    chunk = heads_per_map(len(group), n, heads, budget)
                    probe = HeadReduction(layers, rows[group, :n], o.window, o.horizon, chunk)
                ids = batch.input_ids[group, :n]
                group_entropy = probed_pass(model, ids, probe, temperature, with_entropy)
                if group_entropy is not None:
                    entropy[group, 1:n] = group_entropy
                if probe is not None:
                    waad[group, :n], fai[group, :n], defined[group, :n] = probe.signals(o.head_fraction)
        finally:
            model.train(was_training)
        entropy = entropy * rows if with_entropy else None
        if not layers:
            return CreditSignals(rows, entropy=entropy)
        return CreditSignals(rows, waad * rows, fai, defined & rows, entropy)

    def gammas(self, signals: CreditSignals, generator: torch.Generator | None = None) -> torch.Tensor:
        """γ over target positions (N, L)."""
        o = self.options
        gammas = credit_gammas(
            self.strategy, signals, o.q, o.gamma_amp, o.tau_waad, o.tau_delta, o.alpha, o.neighbourhood,
            o.add_local, generator, o.control_for,
        )  # fmt: skip
        return gammas[:, 1:]

    def __call__(
        self,
        model: torch.nn.Module,
        batch: RolloutBatch,
        temperature: float,
        generator: torch.Generator | None = None,
        size: int | None = None,
        tokens: int | None = None,
    ) -> tuple[torch.Tensor, CreditStats]:
        """The batch's advantages scaled by the strategy's γ, and what to log about it (the pass in forwards of at
        most ``size`` samples and ``tokens`` tokens)."""
        start = time.perf_counter()
        signals = self.signals(model, batch, temperature, size, tokens)
        gammas = self.gammas(signals, generator)
        if gammas.is_cuda:  # the pass's kernels may still run: time them, not their launch
            torch.cuda.synchronize(gammas.device)
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
