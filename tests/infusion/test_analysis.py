"""The infusion analysis: collapse points by docs/methods/infusion.md's definition, the power-law fit and its
prediction, and `zoo infusion analyze` on a sweep directory of runs."""

import json
import math

import pytest

from zoo.errors import ConfigError
from zoo.infusion.analysis import RunResult, analyze, collapse_point, fit_power_law, read_runs, sensitivity, table


def test_collapse_point_interpolates_where_retention_crosses_the_line():
    # retention 0.8 without infusion; the line is 0.64; it is crossed between 100 (0.70) and 1000 (0.40)
    point = collapse_point([0, 10, 100, 1000], [0.8, 0.79, 0.70, 0.40], delta=0.2)
    t = (0.70 - 0.64) / (0.70 - 0.40)
    assert point == pytest.approx(math.exp(math.log(100) + t * (math.log(1000) - math.log(100))))
    assert collapse_point([0, 50], [0.8, 0.4], delta=0.2) == pytest.approx(50 * (0.8 - 0.64) / (0.8 - 0.4))  # from 0
    assert collapse_point([0, 50], [0.8, 0.2]) == pytest.approx(50 * (0.8 - 0.4) / (0.8 - 0.2))  # default: half lost
    assert collapse_point([0, 10, 100], [0.8, 0.78, 0.7]) is None  # never collapses in the sweep
    with pytest.raises(ConfigError, match="domain_facts=0"):
        collapse_point([10, 100], [0.8, 0.5])


def test_retention_exactly_on_the_line_is_not_a_collapse():
    # the line is 0.5 (half of 1.0): touching it is not falling below it
    assert collapse_point([0, 100], [1.0, 0.5]) is None
    t = (0.6 - 0.5) / (0.6 - 0.2)
    expected = math.exp(math.log(200) + t * (math.log(300) - math.log(200)))
    assert collapse_point([0, 100, 200, 300], [1.0, 0.5, 0.6, 0.2]) == pytest.approx(expected)


def test_sizes_without_a_collapse_point_are_named_as_left_out_of_the_fit():
    results = _sweep()
    smallest = min(r.parameters for r in results)
    results = [r for r in results if r.parameters != smallest or r.domain_facts < 20]  # never falls: no point
    analysis = analyze(results)
    assert analysis.collapse[smallest] is None and analysis.alpha is not None
    report = table(results, analysis, sensitivity(results, analysis))
    assert f"Left out of the fit: {smallest:,.0f} (no collapse point in the sweep" in report


def _sweep(alpha=0.7, a=-2.0, sizes=(1e4, 4e4, 1.6e5, 6.4e5)):
    """Runs whose retention falls from 0.9 to 0.1 along a logistic in log k centred on exp(a) * N^alpha: every
    size crosses the collapse line at the same offset from its centre, so the fit must find alpha."""
    amounts = [0] + [round(10 ** (i / 4)) for i in range(4, 24)]
    results = []
    for size in sizes:
        star = math.exp(a + alpha * math.log(size))
        for k in amounts:
            z = min(3 * (math.log(star) - math.log(max(k, 1e-9))), 700.0)  # > 0 before the centre
            retention = 0.9 - 0.8 / (1 + math.exp(z))
            results.append(RunResult(f"{size}-{k}", size, k, retention, None))
    return results


def test_the_fit_recovers_a_known_law_and_predicts_the_largest_size():
    analysis = analyze(_sweep(alpha=0.7, a=-2.0))
    assert analysis.alpha == pytest.approx(0.7, abs=0.05)  # interpolating a curved drop costs a little
    assert analysis.held_out == 6.4e5 and analysis.relative_error < 0.15
    a, alpha = fit_power_law([1.0, 10.0, 100.0], [3.0, 30.0, 300.0])
    assert alpha == pytest.approx(1.0) and a == pytest.approx(math.log(3.0))


def test_zoo_infusion_analyze_writes_the_table_the_fit_and_the_plot(run_zoo, tmp_path):
    sweep = tmp_path / "sweep"
    for i, r in enumerate(_sweep(sizes=(1e4, 4e4, 1.6e5))):
        run = sweep / f"{i}_run"
        run.mkdir(parents=True)
        metrics = {
            "recall/general": r.retention,
            "infusion/domain_facts": r.domain_facts,
            "model/non_embedding_parameters": r.parameters,
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
    assert len(read_runs(sweep)) == 3 * 21
    process = run_zoo("infusion", "analyze", str(sweep))
    assert "relative error" in process.stdout
    summary = json.loads((sweep / "infusion.json").read_text())
    assert summary["alpha"] == pytest.approx(0.7, abs=0.05) and summary["delta"] == 0.5
    # the law holds at every line here, so every δ of the sensitivity table finds it
    assert [a["delta"] for a in summary["sensitivity"]] == [0.2, 0.3, 0.5]
    assert all(a["alpha"] == pytest.approx(0.7, abs=0.1) for a in summary["sensitivity"])
    assert "| 0.3 |" in process.stdout
    chosen = run_zoo("infusion", "analyze", str(sweep), "--delta", "0.4")
    assert "below 60% of the un-infused" in chosen.stdout and "| 0.4 |" in chosen.stdout
    assert (sweep / "infusion.png").stat().st_size > 10_000 and list((sweep / "tensorboard").iterdir())
    empty = run_zoo("infusion", "analyze", str(tmp_path / "nothing"), check=False)
    assert empty.returncode == 2 and "no finished infusion runs" in empty.stderr


@pytest.mark.parametrize("experiment", ["infusion_sweep", "infusion_sweep_mesh", "infusion_sweep_gpu"])
def test_the_sweeps_compose_and_the_mesh_arm_matches_the_pythia_widths(experiment):
    from hydra import compose, initialize_config_module

    from zoo.cli.common import CONFIG_MODULE
    from zoo.cli.config import register_presets

    register_presets()

    def model(experiment: str, name: str):
        return compose("fit", overrides=[f"experiment={experiment}", f"model={name}"]).model

    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        sweep = compose("fit", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        models = sweep.hydra.sweeper.params.model.split(",")
        amounts = [int(k) for k in sweep.hydra.sweeper.params["data.domain_facts"].split(",")]
        assert amounts[0] == 0 and amounts == sorted(amounts)  # every size needs its un-infused run
        assert amounts[-1] <= 3 * sweep.data.domain_entities
        widths = [model(experiment, name).hidden_size for name in models]
        assert widths == sorted(widths) and len(set(widths)) == len(widths)
        if experiment == "infusion_sweep_mesh":
            for name, width in zip(models, widths, strict=True):
                assert model(experiment, name).layout == "1+2R2+1"  # 4 distinct blocks, like its Pythia twin
                twin = model("infusion_sweep", name.replace("mesh_", ""))
                assert (twin.hidden_size, twin.num_hidden_layers) == (width, 4)
            pythia = compose("fit", overrides=["experiment=infusion_sweep"])
            assert sweep.data == pythia.data and sweep.trainer.max_steps == pythia.trainer.max_steps
