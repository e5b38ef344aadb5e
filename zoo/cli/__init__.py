"""The ``zoo`` command: :func:`main` hands each command to its module.

``zoo fit|validate|test [OVERRIDES]`` (:mod:`zoo.cli.fit`) compose ``configs/fit.yaml`` with Hydra (groups
``model=``, ``method=``, ``data=``, ``trainer=``, ``strategy=``, ``logger=``, ``experiment=``, ``debug=``; keys
``a.b=c``; ``-m`` sweeps) and run :func:`zoo.run.run`. Overrides are checked before anything runs
(:mod:`zoo.cli.config`): an unknown group option or key stops with one line that names it. ``zoo ls`` lists the
groups and their options; ``zoo hub ...`` manages checkpoints (:mod:`zoo.cli.hub`); ``zoo probe|infusion|budget``
report on runs (:mod:`zoo.cli.reports`); ``zoo synth`` synthesizes data (:mod:`zoo.cli.synth`).
"""

from __future__ import annotations

import logging
import sys
import warnings

from zoo.cli.common import fail
from zoo.cli.config import list_groups, register_presets
from zoo.cli.fit import run_hydra
from zoo.cli.hub import hub_command
from zoo.cli.reports import budget_command, infusion_command, probe_command
from zoo.cli.synth import synth_command

USAGE = """usage: zoo COMMAND [ARGS]

commands:
  fit [OVERRIDES]        train (default: a tiny Pythia on zoo's embedded corpus, on CPU)
  validate [OVERRIDES]   evaluate on the val split (ckpt_path=RUN_DIR_OR_CKPT, or model.init_from=hub:NAME)
  test [OVERRIDES]       evaluate on the test split
  ls                     the config groups and their options
  hub push|list|show|...  the checkpoint hub: push, list, show, pull, merge, export (zoo hub --help)
  probe SOURCE           loop probes of a run, .ckpt or hub:NAME on validation text (zoo probe --help)
  infusion analyze SWEEP collapse points and their scaling law for a knowledge-infusion sweep
  budget SOURCE          a policy under thinking budgets: accuracy, length, adherence, truncation (zoo budget -h)
  synth run|metrics ...  DESIGNER data synthesis and the diversity metrics of a question set (zoo synth -h)

overrides (Hydra): model=mesh  trainer.max_steps=50  data.path=corpus.txt  +trainer.profiler=simple
  method=grpo picks a training recipe apart from the network (model=NAME, or model.path=DIR)
  -m / --multirun sweeps:  zoo fit -m module.optim.lr=1e-3,3e-3
  resume=RUN_DIR continues a killed run from its last checkpoint with the same settings.
  zoo fit --cfg job prints the composed config; zoo fit --help shows Hydra's help.
"""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # Lightning's own use of a torch API that torch deprecated; nothing a zoo user can act on
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        register_presets()
        list_groups(describe=False)
        return
    command, rest = args[0], args[1:]
    register_presets()
    if command in ("fit", "validate", "test"):
        run_hydra(command, rest)
    elif command == "ls":
        list_groups()
    elif command == "hub":
        hub_command(rest)
    elif command == "probe":
        probe_command(rest)
    elif command == "infusion":
        infusion_command(rest)
    elif command == "budget":
        budget_command(rest)
    elif command == "synth":
        synth_command(rest)
    else:
        fail(f"unknown command {command!r}; commands: fit, validate, test, ls, hub, probe, infusion, budget, synth")
