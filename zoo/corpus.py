"""zoo's embedded default corpus: English technical prose that every Python installation carries.

It is built offline, on any machine, from two parts of the running interpreter's standard library:

- the Python Language Reference topics that ship as ``pydoc_data.topics`` (what ``help("if")`` prints),
  one document per topic;
- the docstrings of the standard library's pure-Python modules, read with ``ast`` (nothing is imported or
  executed), one document per module.

About 2 MB of human-written English (CPython 3.11: 79 topics, ~650 modules), enough for a small model to
learn visibly in minutes on a CPU. Nothing is downloaded and no file is copied into zoo. The text depends on
the Python version, so caches built from it are keyed by its content.
"""

from __future__ import annotations

import ast
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Folders of the standard library that are tests, demos or GUI code rather than library documentation.
_SKIPPED = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "tkinter"}
_MIN_DOCSTRING_CHARS = 40


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def _module_docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    nodes = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)),
    ]
    docstrings = (ast.get_docstring(n) for n in nodes)
    return "\n\n".join(d for d in docstrings if d and len(d) >= _MIN_DOCSTRING_CHARS)


def embedded_corpus() -> list[Document]:
    """The documents of the default corpus, in a fixed order."""
    from pydoc_data.topics import topics

    documents = [Document(f"topic:{name}", text.strip()) for name, text in sorted(topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if _SKIPPED.intersection(relative.parts):
            continue
        text = _module_docstrings(path)
        if text:
            documents.append(Document(f"module:{relative.as_posix()}", text))
    if len(documents) < 100:
        raise RuntimeError(
            f"the embedded corpus found only {len(documents)} documents under {stdlib} (a Python "
            "installation without its .py sources?); set data.path to a text file or folder instead"
        )
    return documents
