"""Design logics as Mermaid flowcharts (DESIGNER's extraction output, notes §3.3): parsing and validation.

A logic is accepted when its text holds a ``flowchart``/``graph`` block (fenced in ```mermaid or bare) whose
statements are node definitions and edges, with at least ``min_steps`` nodes and one edge, every edge between
defined or inline-labelled nodes, and every node reachable from a node without incoming edges (the examiner's
first step). Anything else is malformed: the stage counts it and asks again.

Supported syntax (what an LLM writes for a flowchart): ``A[label]``, ``A(label)``, ``A{label}``, ``A([label])``,
``A[[label]]``, ``A((label))``, quoted labels, edges ``-->``, ``---``, ``-.->``, ``==>`` with an optional
``|text|`` or ``-- text -->`` label, chains ``A --> B --> C``, and ``%%`` comments. Subgraphs, styles and class
lines are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"```\s*mermaid\s*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_HEADER = re.compile(r"^\s*(flowchart|graph)(\s+(TD|TB|BT|LR|RL))?\s*;?\s*$", re.IGNORECASE)
_NODE = re.compile(
    r"""\s*([A-Za-z_][\w-]*)\s*   # id
    (\(\[.*?\]\)|\[\[.*?\]\]|\(\(.*?\)\)|\[.*?\]|\(.*?\)|\{.*?\})?   # optional shape with label
    \s*""",
    re.VERBOSE,
)
_ARROW = re.compile(r"\s*(-->|---|-\.->|==>|--\s+[^-]+?\s+-->|==\s+[^=]+?\s+==>)\s*(\|[^|]*\|)?\s*")
_SKIPPED = re.compile(r"^\s*(subgraph\b|end\s*$|style\b|classDef\b|class\b|linkStyle\b|click\b|%%)", re.IGNORECASE)


@dataclass(frozen=True)
class Flowchart:
    nodes: dict[str, str]  # id -> label (the id itself when the node has no label)
    edges: tuple[tuple[str, str], ...]

    def steps(self) -> list[str]:
        """The node labels in a breadth-first order from the roots (ties in the order the nodes appeared)."""
        children: dict[str, list[str]] = {n: [] for n in self.nodes}
        incoming = {n: 0 for n in self.nodes}
        for source, target in self.edges:
            children[source].append(target)
            incoming[target] += 1
        order, seen = [], set()
        frontier = [n for n in self.nodes if incoming[n] == 0]
        while frontier:
            node = frontier.pop(0)
            if node in seen:
                continue
            seen.add(node)
            order.append(node)
            frontier.extend(c for c in children[node] if c not in seen)
        return [self.nodes[n] for n in order]

    def text(self) -> str:
        """A canonical Mermaid rendering (what the pipeline stores and embeds)."""
        lines = ["flowchart TD"]
        lines += [f'    {n}["{label}"]' for n, label in self.nodes.items()]
        lines += [f"    {a} --> {b}" for a, b in self.edges]
        return "\n".join(lines)


class MalformedLogic(ValueError):
    """The text is not a usable design-logic flowchart (the message says why)."""


def _label(shape: str | None) -> str | None:
    if not shape:
        return None
    inner = shape
    while inner and inner[0] in "([{" and inner[-1] in ")]}":
        inner = inner[1:-1]
    return inner.strip().strip('"').strip() or None


def _statement(line: str, nodes: dict[str, str], edges: list[tuple[str, str]]) -> None:
    position, previous = 0, None
    while True:
        match = _NODE.match(line, position)
        if not match or not match.group(1):
            raise MalformedLogic(f"cannot read {line.strip()!r}")
        node, label = match.group(1), _label(match.group(2))
        if label is not None or node not in nodes:
            nodes[node] = label if label is not None else nodes.get(node, node)
        if previous is not None:
            edges.append((previous, node))
        position = match.end()
        if position >= len(line) or line[position:].strip() in ("", ";"):
            return
        arrow = _ARROW.match(line, position)
        if not arrow:
            raise MalformedLogic(f"cannot read {line.strip()!r}")
        previous, position = node, arrow.end()


def parse_flowchart(text: str, min_steps: int = 3) -> Flowchart:
    """The flowchart in ``text`` (an LLM's answer), or :class:`MalformedLogic`."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    lines = body.splitlines()
    start = next((i for i, line in enumerate(lines) if _HEADER.match(line)), None)
    if start is None:
        raise MalformedLogic("no 'flowchart' or 'graph' header")
    nodes: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for line in lines[start + 1 :]:
        line = line.split("%%", 1)[0].rstrip()
        if not line.strip() or _SKIPPED.match(line):
            continue
        if line.strip().startswith("```"):
            break
        for piece in line.split(";"):
            if piece.strip():
                _statement(piece, nodes, edges)
    if len(nodes) < min_steps:
        raise MalformedLogic(f"{len(nodes)} steps, fewer than {min_steps}")
    if not edges:
        raise MalformedLogic("no edges")
    chart = Flowchart(nodes, tuple(dict.fromkeys(edges)))
    if len(chart.steps()) < len(nodes):
        raise MalformedLogic("some steps cannot be reached from a first step (a cycle without a start)")
    return chart
