"""``zoo hub push|list|show|pull|merge|export``."""

from __future__ import annotations

import argparse

from zoo.cli.common import user_error
from zoo.errors import ZooError


# -- hub ----------------------------------------------------------------------------------------------------
def hub_command(args: list[str]) -> None:
    from zoo.hub.store import Entry, Hub, HubError

    parser = argparse.ArgumentParser(prog="zoo hub", description="zoo's checkpoint hub")
    parser.add_argument("--store", help="hub store directory (default: $ZOO_HUB or <zoo cache>/hub)")
    sub = parser.add_subparsers(dest="action", required=True)
    push = sub.add_parser("push", help="publish a run directory or a .ckpt file")
    push.add_argument("source")
    push.add_argument("--name", required=True)
    push.add_argument("--force", action="store_true", help="replace an existing entry")
    sub.add_parser("list", help="list entries")
    show = sub.add_parser("show", help="verify an entry and print its card")
    show.add_argument("name")
    pull = sub.add_parser("pull", help="import a local HF-format directory, a GGUF file or hf:ORG/NAME")
    pull.add_argument("source")
    pull.add_argument("--name")
    pull.add_argument("--force", action="store_true")
    pull.add_argument("--impl", default="auto", choices=["auto", "native", "hf"],
                      help="auto: zoo's own model where it implements the family")  # fmt: skip
    merge = sub.add_parser("merge", help="merge an adapter entry (a LoRA run) into its base as a full entry")
    merge.add_argument("name")
    merge.add_argument("--name", dest="new_name", required=True, help="the full entry's name")
    merge.add_argument("--force", action="store_true", help="replace an existing entry")
    export = sub.add_parser("export", help="write an entry as an HF model directory")
    export.add_argument("name")
    export.add_argument("out_dir")
    export.add_argument("--force", action="store_true", help="overwrite the model files in a non-empty directory")
    opts = parser.parse_args(args)
    hub = Hub(opts.store)
    try:
        if opts.action == "push":
            entry = hub.push(opts.source, opts.name, overwrite=opts.force)
            print(f"pushed {entry.name} -> {entry.path}")
        elif opts.action == "pull":
            entry = hub.pull(opts.source, opts.name, overwrite=opts.force, impl=opts.impl)
            print(f"pulled {opts.source} -> {entry.path}")
        elif opts.action == "merge":
            entry = hub.merge(opts.name, opts.new_name, overwrite=opts.force)
            print(f"merged {opts.name} into its base -> {entry.path}")
        elif opts.action == "export":
            print(f"exported {opts.name} -> {hub.export_hf(opts.name, opts.out_dir, overwrite=opts.force)}")
        elif opts.action == "show":
            entry = hub.entry(opts.name)
            adapter = entry.adapter
            base = entry.base_entry(adapter) if adapter is not None else None  # verified, and the one trained on
            print(entry.card)
            for relative, digest in entry.manifest["files"].items():
                print(f"  {relative:32s} {(entry.path / relative).stat().st_size:>12,d} B  sha256 {digest[:16]}…")
            print(f"verified: every sha256 matches ({entry.path})")
            if base is not None:
                print(f"verified: its base {adapter['base']} is the entry the adapters were trained on ({base.path})")
        else:
            from rich.console import Console
            from rich.table import Table

            table = Table("name", "arch", "created", "where", box=None, pad_edge=False)
            for entry in hub.entries():
                if isinstance(entry, Entry):
                    m = entry.manifest
                    kind = m.get("arch", "?")
                    if "adapter.json" in m["files"]:  # read without verifying: listing stays cheap
                        try:
                            kind += f" + LoRA on {(entry.adapter or {}).get('base', '?')}"
                        except HubError as e:
                            kind += f" + LoRA ([red]{e}[/red])"
                    table.add_row(entry.name, kind, m.get("created", "?"), str(entry.path.parent))
                else:
                    table.add_row("[red]unreadable[/red]", "", "", str(entry))
            Console(width=160).print(table)
    except ZooError as e:
        user_error(e)
