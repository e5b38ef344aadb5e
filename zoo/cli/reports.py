"""The report commands: ``zoo probe`` (loop probes), ``zoo infusion analyze`` (collapse points and their scaling
law), ``zoo budget`` (a policy under thinking budgets)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.cli.common import user_error
from zoo.errors import ConfigError, ZooError


# -- probes -------------------------------------------------------------------------------------------------
def probe_command(args: list[str]) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from zoo.analysis.probes import figures, loop_probes
    from zoo.datamodules.text import TextDataModule
    from zoo.hub.store import load_model
    from zoo.models.interface import Traceable

    parser = argparse.ArgumentParser(prog="zoo probe", description="the MeSH paper's loop probes of a model")
    parser.add_argument("source", help="a run directory, a .ckpt file, hub:NAME or a hub entry directory")
    parser.add_argument("--samples", type=int, default=16, help="validation sequences to average over")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: the training setting)")
    parser.add_argument("--data", help="a text file or folder (default: the data the model was trained on)")
    parser.add_argument("--figures", help="write the probe figures as PNG files into this directory")
    opts = parser.parse_args(args)
    try:
        loaded = load_model(opts.source)
        if not isinstance(loaded.model, Traceable):
            raise ConfigError(f"{opts.source}: a Hugging Face model; the probes trace the blocks of zoo's models only")
        if loaded.tokenizer_dir is None:
            raise ConfigError(f"{opts.source}: no tokenizer saved with this checkpoint")
        data = {k: v for k, v in loaded.data.items() if k in ("path", "dataset", "dataset_config", "text_field")}
        if opts.data:
            data = {"path": opts.data}
        seq_len = opts.seq_len or loaded.data.get("seq_len", 128)
        datamodule = TextDataModule(**data, tokenizer=str(loaded.tokenizer_dir), seq_len=seq_len)
        datamodule.setup()
        split = datamodule.val_set if len(datamodule.val_set) else datamodule.train_set
        blocks = [split[i] for i in range(min(opts.samples, len(split)))]
        report = loop_probes(loaded.model.eval(), torch.stack(blocks)[:, :-1])
    except ZooError as e:
        user_error(e)
    console = Console(width=120)
    console.print(f"{type(loaded.model).__name__} on {len(blocks)} validation sequences of {seq_len} tokens")
    updates = Table("stage", "relative update (mean ± std)", box=None, pad_edge=False)
    for stage, mean, std in zip(report.stages, report.update_mean, report.update_std, strict=True):
        updates.add_row(stage, f"{mean:.4f} ± {std:.4f}")
    console.print(updates)
    states = Table("state", "CKA with next", "σ10/σ1", "σ25/σ1", f"σ{report.spectra.shape[1]}/σ1", box=None)
    for i, name in enumerate(report.states):
        following = f"{report.cka[i, i + 1]:.4f}" if i + 1 < len(report.states) else ""
        spectrum = report.spectra[i]
        states.add_row(name, following, *(f"{spectrum[min(k, len(spectrum)) - 1]:.4f}" for k in (10, 25, 50)))
    console.print(states)
    if opts.figures:
        out = Path(opts.figures)
        out.mkdir(parents=True, exist_ok=True)
        for tag, figure in figures(report).items():
            figure.savefig(out / f"{tag.split('/')[-1]}.png", dpi=120)
        console.print(f"figures written to {out}")


# -- knowledge infusion ---------------------------------------------------------------------------------------
def infusion_command(args: list[str]) -> None:
    from zoo.infusion.analysis import DEFAULT_DELTA, write_report

    parser = argparse.ArgumentParser(prog="zoo infusion", description="knowledge-infusion sweeps")
    sub = parser.add_subparsers(dest="action", required=True)
    analyze = sub.add_parser("analyze", help="collapse points, the scaling law and its prediction")
    analyze.add_argument("sweep", help="the sweep directory (its runs' metrics.json are read)")
    analyze.add_argument(
        "--delta", type=float, default=DEFAULT_DELTA, help="collapse: retention below (1 - delta) x its value at k=0"
    )
    opts = parser.parse_args(args)
    try:
        text, out = write_report(Path(opts.sweep), opts.delta)
    except ZooError as e:
        user_error(e)
    print(text)
    print(f"wrote infusion.md, infusion.json, infusion.png and tensorboard/ in {out}")


# -- thinking budgets ----------------------------------------------------------------------------------------
def budget_command(args: list[str]) -> None:
    from zoo.generation import in_place_engine
    from zoo.hub.store import load_model
    from zoo.rl.methods import bard_evaluation as evaluation
    from zoo.tasks.registry import TASKS, load_problems
    from zoo.text.chat import chat_format
    from zoo.text.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(prog="zoo budget", description="a policy under thinking budgets (BARD)")
    parser.add_argument("source", help="a run directory, a .ckpt file, hub:NAME or a hub entry directory")
    parser.add_argument(
        "--levels",
        type=int,
        nargs="+",
        help="budgets in tokens (default: the run's data.budgets; a run trained "
        "without budgets is asked without the control line, its answers scored against each budget)",
    )
    parser.add_argument("--problems", type=int, default=128, help="held-out questions (the run's validation set)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--no-truncation", action="store_true", help="skip the truncate-at-b baseline")
    parser.add_argument("--out", help="write budgets.md, budgets.json and budgets.png into this directory")
    opts = parser.parse_args(args)
    try:
        loaded = load_model(opts.source)
        data = loaded.data
        trained_with = (data.get("budgets") or {}).get("levels")
        levels = opts.levels or trained_with
        if not levels:
            raise ConfigError(f"{opts.source}: trained without data.budgets; give the budgets with --levels")
        if any(b < 1 for b in levels) or opts.problems < 1 or opts.max_new_tokens < 1:
            raise ConfigError("--levels, --problems and --max-new-tokens must be >= 1")
        if loaded.tokenizer_dir is None:
            raise ConfigError(f"{opts.source}: no tokenizer saved with this checkpoint")
        task = data.get("task", "thinking")
        _, problems = load_problems(
            task, data.get("path"), data.get("val_path"), 1, opts.problems, data.get("seed", 1234), data.get("options")
        )
        if not all(p.thoughts for p in problems):
            raise ConfigError(f"{opts.source}: task {task!r} has no thinking chains (task: thinking)")
        tokenizer = load_tokenizer(loaded.tokenizer_dir)
        chat = chat_format(tokenizer, data.get("chat_template", "auto"), TASKS[task].system)
        results = evaluation.evaluate_budgets(
            in_place_engine(loaded.model.eval(), tokenizer),
            tokenizer,
            problems,
            sorted(levels),
            opts.max_new_tokens,
            chat.stop_token_ids if chat is not None else (tokenizer.eos_token_id,),
            truncation=not opts.no_truncation,
            prompt_ids=chat.prompt_ids if chat is not None else None,
            control_line=trained_with is not None,
        )
    except ZooError as e:
        user_error(e)
    table = evaluation.markdown_table(results)
    correlation = evaluation.length_correlation(results)
    asked = "with the budget's control line" if trained_with else "as trained, without a control line"
    print(f"{opts.source}: {len(problems)} held-out questions per budget, greedy, {asked}")
    print(table)
    print(f"correlation of mean thinking length with the budget: {correlation:.3f}")
    if opts.out:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "budgets.md").write_text(table + "\n")
        rows = evaluation.report_rows(results)
        (out / "budgets.json").write_text(json.dumps({"levels": rows, "length_correlation": correlation}, indent=2))
        evaluation.figure(results).savefig(out / "budgets.png", dpi=100)
        print(f"wrote budgets.md, budgets.json and budgets.png in {out}")
