"""MeSH and recursive models through the command line: fit with probes, ``zoo probe``, the hub, the experiment."""

import csv
import json

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo.hub.store import Hub, load_model


def _run_dir(root):
    (hydra,) = list(root.rglob(".hydra"))
    return hydra.parent


def test_fit_mesh_logs_probes_and_the_hub_round_trips_it(run_zoo, tiny_width, tmp_path):
    run_zoo("fit", "model=mesh", *tiny_width, "debug=limit", "probes.every_n_steps=10", "probes.samples=4")
    run_dir = _run_dir(tmp_path / "runs" / "mesh")
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"probe/update/core1", "probe/update/core2", "probe/cka/h1-h2", "probe/update/coda"} <= set(scalars)
    assert [e.step for e in events.Scalars("probe/update/core1")] == [10, 20]
    assert {"probe/cka", "probe/spectrum", "probe/relative_update"} <= set(events.Tags()["images"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model/non_embedding_parameters"] < metrics["model/parameters"]

    printed = run_zoo("probe", str(run_dir), "--samples", "4", "--figures", str(tmp_path / "figures")).stdout
    for word in ("MeSH", "core1", "core2", "coda", "h_out", "CKA"):
        assert word in printed
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"cka.png", "spectrum.png", "relative_update.png"}

    run_zoo("hub", "push", str(run_dir), "--name", "tiny-mesh")
    entry = Hub().entry("tiny-mesh")
    assert entry.config["arch"] == "mesh" and entry.config["layout"] == "1+2R2+1"
    from_hub, from_run = load_model("hub:tiny-mesh").model.eval(), load_model(run_dir).model.eval()
    tokens = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert torch.equal(from_hub(tokens), from_run(tokens))
    export = run_zoo("hub", "export", "tiny-mesh", str(tmp_path / "hf"), check=False)
    assert export.returncode == 2 and "only gpt_neox, llama and hf models export to HF" in export.stderr


def test_recursive_recurrence_override_reaches_the_checkpoint(run_zoo, tiny_width, tmp_path):
    run_zoo(
        "fit",
        "model=recursive",
        "model.recurrence=anchor_emb",
        "model.layout=1+1R3+0",
        *tiny_width,
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "probes.every_n_steps=0",
    )
    checkpoint = torch.load(_run_dir(tmp_path / "runs" / "recursive") / "checkpoints" / "last.ckpt", weights_only=True)
    model = checkpoint["hyper_parameters"]["model"]
    assert (model["arch"], model["recurrence"], model["layout"]) == ("recursive", "anchor_emb", "1+1R3+0")


def test_matched_compute_experiment_writes_its_table_and_plot(run_zoo, tiny_width, tmp_path):
    run_zoo(
        "fit",
        "experiment=mesh_matched_compute",
        *tiny_width,
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2",
        "probes.every_n_steps=0",
        timeout=600,
    )
    (sweep,) = list((tmp_path / "runs" / "mesh_matched_compute").iterdir())
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    variants = ["pythia_matched", "vanilla_matched", "recursive", "recursive_anchor", "mesh"]
    assert [r["variant"] for r in rows] == variants
    params = {r["variant"]: int(r["non-embedding params"]) for r in rows}
    assert params["recursive"] == params["recursive_anchor"] < params["mesh"] < params["pythia_matched"]
    assert params["vanilla_matched"] == params["pythia_matched"]  # the same stack, scaled and initialised alike
    assert all(float(r["val ppl"]) > 1 and int(float(r["train tokens"])) == 6 * 8 * 64 for r in rows)
    assert (sweep / "results.png").stat().st_size > 10_000
    assert "| mesh |" in (sweep / "results.md").read_text()
