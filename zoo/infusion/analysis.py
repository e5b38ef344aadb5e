"""The analysis of a knowledge-infusion sweep (arXiv:2509.19371; notes §2): collapse point per model size, the
scaling law of collapse point against size, and its prediction for a larger model.

The paper does not publish its definitions or its law's form; zoo's, which docs/methods/infusion.md repeats:

- **retention** R(N, k): general-fact recall (``recall/general``, multiple choice) at the end of a run of a
  model with N non-embedding parameters that was infused with k domain facts;
- **collapse point** k*(N): the infusion at which retention first falls below (1 − δ)·R(N, 0), interpolated
  between the two swept amounts around it (in log k, or linearly from k = 0); ``None`` when retention never
  falls that far in the sweep. δ = 0.5 by default: half the retention lost, a collapse rather than a dip. (Chosen
  after the first CPU sweep, where δ = 0.2 was within single runs' noise - neighbouring amounts differ by up to
  0.07 recall - and ordered the two largest sizes wrongly; docs/methods/infusion.md reports δ = 0.2, 0.3 and
  0.5.) The collapse point is also the **optimal infusion**: the most domain knowledge the model takes before it
  forgets;
- **scaling law**: log k* = a + α · log N, fitted by least squares on every size but the largest (a power law,
  as the data-mixing phase-transition literature finds for critical mixing ratios); its prediction for the
  largest size is compared with that size's measured collapse point.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError

DEFAULT_DELTA = 0.5
SENSITIVITY_DELTAS = (0.2, 0.3, 0.5)  # the report repeats the analysis at these, to show how much hangs on δ


@dataclass(frozen=True)
class RunResult:
    run: str
    parameters: float  # non-embedding
    domain_facts: int
    retention: float
    acquisition: float | None


def read_runs(sweep: Path) -> list[RunResult]:
    """Every finished run under ``sweep`` whose metrics hold fact recall."""
    results = []
    for file in sorted(Path(sweep).rglob("metrics.json")):
        metrics = json.loads(file.read_text())
        if "recall/general" not in metrics:
            continue
        results.append(
            RunResult(
                str(file.parent.relative_to(sweep)),
                float(metrics["model/non_embedding_parameters"]),
                int(metrics.get("infusion/domain_facts", 0)),
                float(metrics["recall/general"]),
                metrics.get("recall/domain"),
            )
        )
    if not results:
        raise ConfigError(f"{sweep}: no finished infusion runs (metrics.json with recall/general) below it")
    return results


def collapse_point(amounts: list[int], retentions: list[float], delta: float = DEFAULT_DELTA) -> float | None:
    """The infusion at which retention first falls below (1 − delta) × its value at k = 0."""
    pairs = sorted(zip(amounts, retentions, strict=True))
    if pairs[0][0] != 0:
        raise ConfigError("a collapse point needs a run without infusion (domain_facts=0) at every size")
    threshold = (1 - delta) * pairs[0][1]
    for (k0, r0), (k1, r1) in zip(pairs, pairs[1:], strict=False):
        if r1 < threshold:
            t = (r0 - threshold) / (r0 - r1) if r0 != r1 else 1.0
            if k0 == 0:
                return k1 * t
            return math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0)))
    return None


def fit_power_law(sizes: list[float], points: list[float]) -> tuple[float, float]:
    """(a, alpha) of log point = a + alpha · log size, least squares."""
    if len(sizes) < 2:
        raise ConfigError("the scaling law needs collapse points at two model sizes or more")
    alpha, a = np.polyfit(np.log(sizes), np.log(points), 1)
    return float(a), float(alpha)


@dataclass
class Analysis:
    delta: float
    sizes: list[float]
    collapse: dict[float, float | None]
    a: float | None = None
    alpha: float | None = None
    held_out: float | None = None
    predicted: float | None = None
    measured: float | None = None

    @property
    def relative_error(self) -> float | None:
        if self.predicted is None or self.measured is None:
            return None
        return abs(self.predicted - self.measured) / self.measured


def analyze(results: list[RunResult], delta: float = DEFAULT_DELTA) -> Analysis:
    sizes = sorted({r.parameters for r in results})
    collapse = {}
    for size in sizes:
        runs = [r for r in results if r.parameters == size]
        collapse[size] = collapse_point([r.domain_facts for r in runs], [r.retention for r in runs], delta)
    analysis = Analysis(delta, sizes, collapse)
    fitted = [s for s in sizes[:-1] if collapse[s] is not None]
    if len(fitted) >= 2:
        analysis.a, analysis.alpha = fit_power_law(fitted, [collapse[s] for s in fitted])
        analysis.held_out = sizes[-1]
        analysis.predicted = math.exp(analysis.a + analysis.alpha * math.log(sizes[-1]))
        analysis.measured = collapse[sizes[-1]]
    return analysis


def sensitivity(results: list[RunResult], analysis: Analysis) -> list[Analysis]:
    """The analysis at every δ of SENSITIVITY_DELTAS and the chosen one, in order."""
    deltas = sorted({*SENSITIVITY_DELTAS, analysis.delta})
    return [analysis if d == analysis.delta else analyze(results, d) for d in deltas]


def _count(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "none"


def table(results: list[RunResult], analysis: Analysis, variants: list[Analysis]) -> str:
    """The report: every run, the collapse points, the fit and its prediction, and ``variants`` (the
    :func:`sensitivity` analyses) side by side."""
    lines = [
        f"Collapse point: retention below {1 - analysis.delta:.0%} of the un-infused model's.",
        "",
        "| non-embedding params | domain facts | retention (general recall) | acquisition (domain recall) |",
        "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r.parameters, r.domain_facts)):
        acquisition = f"{r.acquisition:.3f}" if r.acquisition is not None else "–"
        lines.append(f"| {r.parameters:,.0f} | {r.domain_facts} | {r.retention:.3f} | {acquisition} |")
    lines += ["", "| non-embedding params | collapse point (domain facts) |", "|---|---|"]
    for size in analysis.sizes:
        point = analysis.collapse[size]
        lines.append(f"| {size:,.0f} | {f'{point:.0f}' if point is not None else 'none in the sweep'} |")
    left_out = [s for s in analysis.sizes[:-1] if analysis.collapse[s] is None]
    if left_out:
        lines += [
            "",
            f"Left out of the fit: {', '.join(f'{s:,.0f}' for s in left_out)} (no collapse point in the sweep: "
            "retention never fell below the line).",
        ]
    if analysis.alpha is None:
        lines += ["", "No fit: fewer than two of the smaller sizes have a collapse point."]
    if analysis.alpha is not None:
        measured = f"{analysis.measured:.0f}" if analysis.measured is not None else "none in the sweep"
        error = f"{analysis.relative_error:.1%}" if analysis.relative_error is not None else "–"
        lines += [
            "",
            f"Fit on the smaller sizes: log k* = {analysis.a:.3f} + {analysis.alpha:.3f} · log N.",
            f"Predicted collapse point at N = {analysis.held_out:,.0f}: {analysis.predicted:.0f}; measured: {measured};"
            f" relative error {error}.",
        ]
    lines += [
        "",
        "Sensitivity to δ (collapse points by size, smallest first; the fit on all but the largest):",
        "",
        "| δ | collapse points | α | predicted | measured | error |",
        "|---|---|---|---|---|---|",
    ]
    for other in variants:
        alpha = f"{other.alpha:.2f}" if other.alpha is not None else "–"
        error = f"{other.relative_error:.1%}" if other.relative_error is not None else "–"
        points = " / ".join(_count(other.collapse[size]) for size in other.sizes)
        lines.append(
            f"| {other.delta:g} | {points} | {alpha} | {_count(other.predicted)} | {_count(other.measured)} | {error} |"
        )
    return "\n".join(lines) + "\n"


def figure(results: list[RunResult], analysis: Analysis):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    origin = min((r.domain_facts for r in results if r.domain_facts > 0), default=2) / 2  # where k = 0 is drawn
    for size in analysis.sizes:
        runs = sorted((r for r in results if r.parameters == size), key=lambda r: r.domain_facts)
        amounts = [r.domain_facts or origin for r in runs]
        left.plot(amounts, [r.retention for r in runs], marker="o", label=f"N = {size:,.0f}")
        if analysis.collapse[size] is not None:
            left.axvline(analysis.collapse[size], linestyle=":", color=left.lines[-1].get_color())
    left.set(xscale="log", xlabel="domain facts infused", ylabel="general recall", title="Retention")
    swept = sorted({r.domain_facts for r in results})
    left.set_xticks([k or origin for k in swept], [f"{k:,}" for k in swept])
    left.minorticks_off()
    left.legend()
    known = [(s, k) for s, k in analysis.collapse.items() if k is not None]
    if known:
        right.plot(*zip(*known, strict=True), "o", label="collapse point")
    if analysis.alpha is not None:
        grid = np.geomspace(min(analysis.sizes), max(analysis.sizes), 50)
        right.plot(grid, np.exp(analysis.a + analysis.alpha * np.log(grid)), label=f"fit, α = {analysis.alpha:.2f}")
        right.plot([analysis.held_out], [analysis.predicted], "x", markersize=10, label="prediction")
    right.set(xscale="log", yscale="log", xlabel="non-embedding parameters", ylabel="domain facts", title="Collapse")
    if right.lines:
        right.legend()
    else:
        right.text(0.5, 0.5, "no collapse point in the sweep", ha="center", transform=right.transAxes)
    fig.tight_layout()
    return fig


def write_report(sweep: Path, delta: float = DEFAULT_DELTA) -> tuple[str, Path]:
    """Analyse the sweep under ``sweep``; write infusion.md, infusion.json, infusion.png and a TensorBoard
    event file into it. Returns the table and the folder."""
    from torch.utils.tensorboard import SummaryWriter

    results = read_runs(sweep)
    analysis = analyze(results, delta)
    variants = sensitivity(results, analysis)
    text = table(results, analysis, variants)
    (sweep / "infusion.md").write_text(text)
    summary = {**asdict(analysis), "relative_error": analysis.relative_error, "runs": [asdict(r) for r in results]}
    summary["collapse"] = {str(k): v for k, v in analysis.collapse.items()}
    summary["sensitivity"] = [
        {**asdict(a), "collapse": {str(k): v for k, v in a.collapse.items()}, "relative_error": a.relative_error}
        for a in variants
    ]
    (sweep / "infusion.json").write_text(json.dumps(summary, indent=2) + "\n")
    fig = figure(results, analysis)
    fig.savefig(sweep / "infusion.png", dpi=120)
    with SummaryWriter(str(sweep / "tensorboard")) as writer:
        writer.add_figure("infusion/analysis", fig)
        for size, point in analysis.collapse.items():
            if point is not None:
                writer.add_scalar("infusion/collapse_point", point, int(size))
    return text, sweep
