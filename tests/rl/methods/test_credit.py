"""Attention-based credit assignment (notes §1) on synthetic attention maps with known structure: WAAD peaks at chunk
onsets, TopQ(FAI) recovers planted anchor columns, each strategy's γ, q = 0, the advantage's sign, padding; and the
stage run on a real policy equals the metrics computed from its recorded maps."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.analysis.tensor_memory import TensorMemory
from zoo.errors import ConfigError
from zoo.models import build_model, config_from_dict
from zoo.models.attention_maps import MAP_COPIES, MapRecorder
from zoo.rl.methods.attention_credit import CreditAssignment, heads_per_map, pass_groups
from zoo.rl.methods.credit import (
    STRATEGIES,
    CreditSignals,
    attention_jumps,
    credit_gammas,
    future_attention_influence,
    mean_attention_distance,
    shape_advantages,
    split_heads,
    top_fraction,
    windowed_attention_distance,
)
from zoo.rl.rollout import RolloutBatch


def _causal_uniform(n: int) -> torch.Tensor:
    return torch.ones(n, n).tril() / torch.arange(1, n + 1)[:, None]


def _chunked_map(n: int, onsets: list[int], back: int) -> torch.Tensor:
    """Inside a chunk every row attends to the previous token; an onset row attends ``back`` tokens back."""
    maps = torch.zeros(n, n)
    maps[0, 0] = 1
    for t in range(1, n):
        maps[t, max(0, t - back) if t in onsets else t - 1] = 1
    return maps


def test_waad_peaks_exactly_at_chunk_onsets_and_the_jumps_flank_them():
    n, window, onsets = 52, 10, [16, 24, 31, 39, 47]
    rows = torch.zeros(n, dtype=torch.bool)
    rows[6:] = True
    waad = windowed_attention_distance(_chunked_map(n, onsets, back=15), window)
    response = torch.arange(n)[rows]
    peaks = [int(t) for t in response if waad[t] > 1]
    assert peaks == onsets
    assert torch.all(waad[onsets] == window)  # min(t − s, W) clamps the long look-back at W
    delta, valid = attention_jumps(waad, rows)
    assert not valid[n - 1] and not valid[:6].any()
    jumps = sorted(int(t) for t in torch.nonzero(delta).flatten())
    assert jumps == sorted([t - 1 for t in onsets] + onsets)  # into and out of every peak
    assert top_fraction(delta, valid, 10 / int(valid.sum())).nonzero().flatten().tolist() == jumps


def test_mean_attention_distance_and_head_split():
    n = 20
    rows = torch.zeros(n, dtype=torch.bool)
    rows[8:] = True
    heads = torch.stack([_chunked_map(n, [], 1), _chunked_map(n, list(range(n)), 5), _causal_uniform(n)])
    spans = mean_attention_distance(heads, rows)
    expected_uniform = sum(t / 2 for t in range(8, n)) / (n - 8)  # a uniform row over s ≤ t averages t/2
    torch.testing.assert_close(spans, torch.tensor([1.0, 5.0, expected_uniform]))
    local, glob = split_heads(torch.tensor([3.0, 0.5, 9.0, 1.0, 7.0, 4.0, 2.0, 8.0, 6.0, 5.0]), 0.3)
    assert sorted(local.tolist()) == [1, 3, 6] and sorted(glob.tolist()) == [2, 4, 7]
    for heads, fraction, size in ((12, 0.3, 4), (16, 0.3, 5), (5, 0.3, 2), (2, 0.1, 1)):  # round(fraction·K), ≥ 1
        local, glob = split_heads(torch.arange(heads, dtype=torch.float).flip(0), fraction)
        assert sorted(local.tolist()) == list(range(heads - size, heads)) and sorted(glob.tolist()) == list(range(size))


def test_top_fai_recovers_planted_anchor_columns():
    torch.manual_seed(0)
    n, planted = 60, [14, 23, 37]
    rows = torch.zeros(n, dtype=torch.bool)
    rows[10:] = True
    maps = torch.rand(n, n).tril()
    for s in planted:
        maps[s + 1 :, s] += 3.0 * torch.rand(n - s - 1) + 2.0  # later rows keep coming back to s
    maps = maps / maps.sum(-1, keepdim=True)
    fai, defined = future_attention_influence(maps, rows, (3, 40))
    candidates = rows & defined
    assert not defined[n - 3 :].any() and defined[n - 4]  # T(s) = {t ∈ R : s + 3 ≤ t ≤ s + 40}
    assert fai[~defined].eq(0).all()
    found = top_fraction(fai, candidates, 3 / int(candidates.sum()))
    assert found.nonzero().flatten().tolist() == planted


def test_fai_is_the_mean_over_the_horizon_band():
    n = 12
    rows = torch.zeros(n, dtype=torch.bool)
    rows[4:] = True
    maps = _causal_uniform(n)
    fai, defined = future_attention_influence(maps, rows, (2, 5))
    s = 3
    band = [t for t in range(n) if rows[t] and 2 <= t - s <= 5]
    assert math.isclose(float(fai[s]), sum(float(maps[t, s]) for t in band) / len(band), rel_tol=1e-6)
    assert defined.tolist() == [True] * 10 + [False] * 2


def _signals(waad, fai, rows, entropy=None) -> CreditSignals:
    rows = torch.tensor(rows, dtype=torch.bool)[None]
    return CreditSignals(
        rows, torch.tensor(waad, dtype=torch.float32)[None], torch.tensor(fai)[None], rows.clone(),
        None if entropy is None else torch.tensor(entropy)[None],
    )  # fmt: skip


def test_coupled_moves_part_of_a_dominated_anchors_bonus_to_its_introducing_token():
    rows = [False, False] + [True] * 8
    waad = [0, 0, 1, 1, 1, 5, 1, 1, 1, 1]  # a chunk onset at 5: jumps Δ_4 = Δ_5 = 4
    fai = [0, 0, 0.1, 0.1, 0.1, 0.2, 0.9, 0.1, 0.1, 0.1]  # the anchor at 6, right after the onset
    signals = _signals(waad, fai, rows)
    one = 1 / 8  # TopQ takes ceil(q·8) = 1 token: the anchor
    gammas = credit_gammas("coupled", signals, q=one, tau_delta=1.0)  # τ_waad: the median WAAD, 1
    expected = torch.ones(10)
    expected[6] = expected[5] = 1.25  # WAAD_6 = 1 ≤ 1 and max(Δ_3, Δ_4, Δ_5) = 4 ≥ 1: dominated; intro = 5
    torch.testing.assert_close(gammas[0], expected)
    moved = credit_gammas("coupled", signals, q=one, tau_delta=1.0, alpha=1.0)[0]
    assert moved[6] == 1 and moved[5] == 1.5
    alone = credit_gammas("coupled", signals, q=one, tau_waad=0.5, tau_delta=1.0)[0]  # not locally dominated
    assert alone.tolist() == [1.5 if t == 6 else 1.0 for t in range(10)]
    far = credit_gammas("coupled", signals, q=one, tau_delta=1.0, neighbourhood=1)[0]  # only Δ_5 looked at
    assert far[5] == 1.25
    with_local = credit_gammas("coupled", signals, q=2 / 7, tau_delta=1.0, add_local=True)[0]
    assert with_local[4] == 1.5  # Δ_4 is a top jump: lifted to γ_amp


def test_each_strategy_amplifies_ceil_q_n_of_its_candidates_and_none_of_the_padding():
    torch.manual_seed(1)
    size, n = 4, 30
    rows = torch.zeros(size, n, dtype=torch.bool)
    for i, (start, end) in enumerate([(5, 30), (5, 20), (8, 26), (3, 12)]):
        rows[i, start:end] = True  # rows 1-3 are right-padded
    signals = CreditSignals(rows, torch.rand(size, n) * 5, torch.rand(size, n), torch.ones(size, n, dtype=torch.bool))
    signals.entropy = torch.rand(size, n)
    for strategy in STRATEGIES:
        gammas = credit_gammas(strategy, signals, q=0.4, generator=torch.Generator().manual_seed(0))
        assert gammas[~rows].eq(1).all(), strategy
        # Eq. 19 sums its terms: an anchor that also introduces a dominated anchor gets 1 + 0.5 + 0.5·α
        assert gammas.ge(1).all() and gammas.le((1.75 if strategy in ("coupled", "random") else 1.5) + 1e-6).all()
        amplified = (gammas > 1).sum(-1)
        if strategy in ("global", "entropy"):  # candidates: every response token
            assert amplified.tolist() == [math.ceil(0.4 * int(r.sum()) - 1e-6) for r in rows], strategy
        elif strategy == "local":  # candidates: tokens with a next response token
            assert amplified.tolist() == [math.ceil(0.4 * (int(r.sum()) - 1) - 1e-6) for r in rows]
        elif strategy == "none":
            assert amplified.eq(0).all()
        assert credit_gammas(strategy, signals, q=0.0).eq(1).all(), strategy


def test_random_control_is_seeded_and_differs_from_the_anchors():
    torch.manual_seed(2)
    rows = torch.ones(2, 40, dtype=torch.bool)
    signals = CreditSignals(rows, torch.rand(2, 40), torch.rand(2, 40), rows.clone())
    first = credit_gammas("random", signals, generator=torch.Generator().manual_seed(5))
    again = credit_gammas("random", signals, generator=torch.Generator().manual_seed(5))
    other = credit_gammas("random", signals, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, credit_gammas("coupled", signals))


@pytest.mark.parametrize("control_for", ["local", "global", "coupled", "entropy"])
def test_random_control_matches_its_strategys_count_and_weight_per_sequence(control_for):
    """On each sequence the control amplifies as many tokens as the strategy it controls for, with the same γ
    values (so the same total weight), anywhere in the response and nowhere else; over many draws every response
    position is picked about equally often."""
    torch.manual_seed(3)
    size, n = 3, 34
    rows = torch.zeros(size, n, dtype=torch.bool)
    for i, (start, end) in enumerate([(0, 34), (4, 30), (10, 21)]):
        rows[i, start:end] = True
    signals = CreditSignals(rows, torch.rand(size, n) * 5, torch.rand(size, n), rows.clone(), torch.rand(size, n))
    signals.fai_defined[:, -12:] = False  # near the end T(s) is empty: global takes fewer than ceil(q·|R|)
    matched = credit_gammas(control_for, signals, tau_delta=0.5)
    counts = torch.zeros(size, n)
    for seed in range(300):
        control = credit_gammas(
            "random", signals, tau_delta=0.5, generator=torch.Generator().manual_seed(seed), control_for=control_for
        )
        assert control[~rows].eq(1).all()
        for i in range(size):
            torch.testing.assert_close(control[i].sort().values, matched[i].sort().values, rtol=0, atol=0)
        counts += control > 1
    amplified = (matched > 1).sum(-1, keepdim=True).float()
    expected = 300 * amplified / rows.sum(-1, keepdim=True)  # per response position, uniform
    assert ((counts - expected).abs()[rows] < 6 * expected.expand_as(counts)[rows].sqrt() + 1).all()
    with pytest.raises(ValueError, match="random control"):
        credit_gammas("random", signals, control_for="random")


def test_sign_handling_and_gamma_is_detached():
    advantages = torch.tensor([[1.0, -1.0, 0.0, 2.0]])
    gammas = torch.tensor([[1.5, 1.5, 1.5, 1.0]], requires_grad=True)
    assert shape_advantages(advantages, gammas, "both").tolist() == [[1.5, -1.5, 0.0, 2.0]]
    assert shape_advantages(advantages, gammas, "pos").tolist() == [[1.5, -1.0, 0.0, 2.0]]
    assert shape_advantages(advantages, gammas, "neg").tolist() == [[1.0, -1.5, 0.0, 2.0]]
    assert not shape_advantages(advantages, gammas).requires_grad
    with pytest.raises(ValueError, match="sign"):
        shape_advantages(advantages, gammas, "positive")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    start=st.integers(0, 10),
    q=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_top_fraction_takes_ceil_q_n_of_the_candidates_only(n, start, q, seed):
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.rand(3, n, generator=generator) < 0.7
    candidates[:, : min(start, n)] = False
    chosen = top_fraction(torch.rand(3, n, generator=generator), candidates, q)
    assert not (chosen & ~candidates).any()
    assert chosen.sum(-1).tolist() == [math.ceil(q * int(c.sum()) - 1e-6) for c in candidates]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 24), heads=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_metrics_of_the_mean_map_are_the_mean_of_the_heads_metrics(n, heads, seed):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(heads, n, n, generator=generator).tril()
    maps = maps / maps.sum(-1, keepdim=True)
    rows = torch.rand(n, generator=generator) < 0.6
    mean = maps.mean(0)
    torch.testing.assert_close(windowed_attention_distance(maps, 4).mean(0), windowed_attention_distance(mean, 4))
    torch.testing.assert_close(
        future_attention_influence(maps, rows, (1, 6))[0].mean(0), future_attention_influence(mean, rows, (1, 6))[0]
    )
    torch.testing.assert_close(mean_attention_distance(maps, rows).mean(0), mean_attention_distance(mean, rows))


POLICY = dict(arch="mesh", layout="1+2R2+1", vocab_size=61, hidden_size=32, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)  # fmt: skip


def _batch(prompt_lengths, response_lengths, width=24) -> RolloutBatch:
    torch.manual_seed(3)
    size = len(prompt_lengths)
    ids = torch.zeros(size, width + 1, dtype=torch.long)
    mask = torch.zeros(size, width)
    for i, (p, r) in enumerate(zip(prompt_lengths, response_lengths, strict=True)):
        ids[i, : p + r] = torch.randint(1, 61, (p + r,))
        mask[i, p - 1 : p - 1 + r] = 1
    return RolloutBatch(ids, mask, torch.zeros(size, width), torch.arange(size))


def test_the_stage_equals_the_metrics_of_the_recorded_maps():
    """The pass with per-head reduction gives what the paper's recipe gives from each sample's full maps alone:
    head spans over the response rows (Eq. 7), bottom/top 30% groups, WAAD of the local heads' mean map, FAI of
    the global heads'; grouping right-padded samples into one pass changes nothing but float rounding."""
    torch.manual_seed(4)
    model = build_model(config_from_dict(POLICY))
    batch = _batch([5, 7, 4], [15, 9, 12])
    options = dict(window=4, horizon=[2, 8], layers=[1, 2, 4])
    signals = CreditAssignment("coupled", {**options, "map_budget_mb": 0}).signals(model, batch, temperature=1.0)
    grouped = CreditAssignment("coupled", options).signals(model, batch, temperature=1.0)
    assert model.training  # restored
    for name in ("waad", "fai", "entropy"):
        torch.testing.assert_close(getattr(grouped, name), getattr(signals, name), atol=1e-5, rtol=1e-4)
    assert torch.equal(grouped.fai_defined, signals.fai_defined)
    for i in range(3):
        n = int(batch.response_mask[i].nonzero().max()) + 2
        recorder = MapRecorder({1, 2, 4})
        with torch.no_grad():
            model.eval()
            logits = model(batch.input_ids[i : i + 1, :n], attention_probe=recorder)[0]
        maps = torch.cat([recorder.maps[layer][0] for layer in (1, 2, 4)])  # (K, n, n)
        rows = torch.zeros(n, dtype=torch.bool)
        rows[1:] = batch.response_mask[i, : n - 1].bool()
        local, glob = split_heads(mean_attention_distance(maps, rows), 0.3)
        waad = windowed_attention_distance(maps[local].mean(0), 4)
        torch.testing.assert_close(signals.waad[i, :n][rows], waad[rows])
        fai, defined = future_attention_influence(maps[glob].mean(0), rows, (2, 8))
        torch.testing.assert_close(signals.fai[i, :n], fai)
        assert torch.equal(signals.fai_defined[i, :n], defined & rows)
        assert torch.equal(signals.rows[i, :n], rows) and not signals.rows[i, n:].any()
        entropy = torch.special.entr(torch.softmax(logits[:-1], -1)).sum(-1)  # token t's from row t - 1
        torch.testing.assert_close(signals.entropy[i, 1:n][rows[1:]], entropy[rows[1:]], atol=1e-5, rtol=1e-4)
    gammas = CreditAssignment("coupled", options).gammas(signals)
    assert gammas.shape == batch.response_mask.shape
    assert torch.equal(gammas, credit_gammas("coupled", signals)[:, 1:])  # target t is sequence position t + 1


def test_pass_groups_and_head_chunks_fit_the_budget_every_copy_counted():
    budget = MAP_COPIES * 2 * 40**2 * 4  # one head's maps of two samples of 40 tokens, every copy
    assert pass_groups([10, 40, 20, 40, 5], budget_bytes=budget) == [[1, 3], [2, 0, 4]]  # longest first
    assert pass_groups([10, 40], budget_bytes=0) == [[1], [0]]
    assert pass_groups([10, 40, 20, 40, 5], budget, size=1) == [[1], [3], [2], [0], [4]]  # micro-batches of 1 row
    assert pass_groups([10, 40, 20, 40, 5], 100 * budget, tokens=50) == [[1], [3], [2, 0], [4]]  # rows x longest
    assert heads_per_map(2, 40, heads=8, budget_bytes=budget) == 1
    assert heads_per_map(1, 20, heads=8, budget_bytes=budget) == 8  # 1 x 20² x 8 heads fits 2 x 40² x 1
    assert heads_per_map(1, 40, heads=8, budget_bytes=3 * budget) == 6
    assert heads_per_map(4, 40, heads=8, budget_bytes=0) == 1


def test_the_pass_holds_no_more_map_memory_than_its_budget():
    """Every map copy counted: with a budget of one head of one sample, the pass's peak of tensor memory stays within
    the budget over what the forward itself holds (groups of one sample, heads one at a time); with room for all,
    it holds every head of every sample at once. The signals are the same either way, and without the entropy
    overlap the pass never runs the head."""
    torch.manual_seed(4)
    model = build_model(config_from_dict(dict(POLICY, max_position_embeddings=256)))
    n = 200
    batch = _batch([20, 30, 10, 40], [180, 150, 120, 100], width=n)
    one_head = MAP_COPIES * n**2 * 4
    with TensorMemory() as forward, torch.no_grad():
        model.hidden_states(batch.input_ids[:1, :n])
    peaks, signals = [], []
    for budget in (one_head, 100 * one_head):
        options = dict(layers=[1, 2], map_budget_mb=budget / 2**20, entropy_overlap=False)
        with TensorMemory() as memory:
            signals.append(CreditAssignment("coupled", options).signals(model, batch, temperature=1.0))
        peaks.append(memory.peak)
    signal_tensors = 8 * batch.input_ids.numel() * 4  # the pass's outputs and per-head vectors: (N, L + 1) each
    assert peaks[0] <= forward.peak + one_head + signal_tensors
    assert peaks[1] > forward.peak + 4 * one_head
    assert signals[0].entropy is None
    torch.testing.assert_close(signals[0].waad, signals[1].waad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(signals[0].fai, signals[1].fai, atol=1e-5, rtol=1e-4)


def test_the_pass_runs_in_the_rl_modules_micro_batches(monkeypatch):
    """With micro-batches of one sample the pass makes one forward per sample, and the signals stay the same."""
    torch.manual_seed(4)
    model = build_model(config_from_dict(POLICY))
    batch = _batch([5, 7, 4], [15, 9, 12])
    credit = CreditAssignment("coupled", dict(window=4, horizon=[2, 8], layers=[1, 2]))
    whole = credit.signals(model, batch, temperature=1.0)
    forwards = []
    hidden_states = model.hidden_states
    monkeypatch.setattr(model, "hidden_states", lambda ids, **kw: forwards.append(len(ids)) or hidden_states(ids, **kw))
    split = credit.signals(model, batch, temperature=1.0, size=1)
    assert forwards == [1, 1, 1]
    for name in ("waad", "fai", "entropy"):
        torch.testing.assert_close(getattr(split, name), getattr(whole, name), atol=1e-5, rtol=1e-4)


def test_the_stage_scales_advantages_and_reports_its_share():
    torch.manual_seed(5)
    model = build_model(config_from_dict(POLICY))
    batch = _batch([5, 7], [15, 9])
    batch.advantages = torch.where(torch.arange(2)[:, None] == 0, 1.0, -1.0) * batch.response_mask
    for strategy, expected_share in (("global", (6 + 4) / 24), ("random", (6 + 4) / 24)):
        credit = CreditAssignment(strategy, dict(horizon=[1, 6], control_for="global"))
        advantages, stats = credit(model, batch, 1.0, torch.Generator().manual_seed(0))
        scaled = advantages != batch.advantages
        assert scaled.sum() == 10 and not (scaled & ~batch.response_mask.bool()).any()
        assert stats.amplified == pytest.approx(expected_share)
        assert stats.mean_gamma == pytest.approx(1 + 0.5 * expected_share)
        assert stats.entropy_overlap is not None  # both read the maps (random: to match global)
    none = CreditAssignment("none")(model, batch, 1.0)[1]
    assert none.entropy_overlap is None and none.amplified == 0  # no pass


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="module.credit 'anchors'"):
        CreditAssignment("anchors")
    with pytest.raises(ConfigError, match="module.credit_options setting.*gama"):
        CreditAssignment("coupled", dict(gama=1.5))
    for key, value in (("q", 1.5), ("horizon", [10]), ("scale_sign", "up"), ("tau_waad", "mean"), ("window", 0),
                       ("control_for", "random")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"module.credit_options.{key}"):
            CreditAssignment("local", {key: value})
    with pytest.raises(ConfigError, match="module.credit_options.layers"):
        CreditAssignment("local", dict(layers=[9])).layers(build_model(config_from_dict(POLICY)))


def test_the_stage_reads_a_hugging_face_policy(hf_models):
    from zoo.models.hf import HFCausalLM, HFConfig

    model = HFCausalLM(HFConfig(path=str(hf_models["qwen2"])))
    batch = _batch([5, 7, 4], [15, 9, 12])
    options = dict(window=4, horizon=[2, 8])
    before = model.hf.config._attn_implementation
    alone = CreditAssignment("coupled", {**options, "map_budget_mb": 0}).signals(model, batch, 1.0)
    grouped = CreditAssignment("coupled", options).signals(model, batch, 1.0)
    assert alone.waad[alone.rows].gt(0).any() and alone.fai_defined.any()
    for name in ("waad", "fai", "entropy"):
        torch.testing.assert_close(getattr(grouped, name), getattr(alone, name), atol=1e-5, rtol=1e-4)
    assert model.hf.config._attn_implementation == before  # eager for the pass only
