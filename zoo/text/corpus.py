"""zoo's embedded default corpus: English technical prose that every Python installation carries.

It is built offline, on any machine, from two parts of the running interpreter's standard library:

- the Python Language Reference topics that ship as ``pydoc_data.topics`` (what ``help("if")`` prints),
  one document per topic;
- the docstrings of the standard library's pure-Python modules, read with ``ast`` (nothing is imported or
  executed), one document per module.

About 2 MB of human-written English (CPython 3.11: 79 topics, ~650 modules), enough for a small model to
learn visibly in minutes on a CPU. Nothing is downloaded and no file is copied into zoo. The text depends on
the Python version, so caches built from it are keyed by its content. Parsing the modules takes about 4 s, so the
documents are kept once per process and on disk under the cache directory (``$ZOO_CACHE/corpus``), keyed by the
interpreter and by the name, size and modification time of every file read: an edited or upgraded standard library
is parsed again, and an unreadable cache file is ignored and rewritten.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from zoo.io.files import atomic_file, cache_dir

# Folders of the standard library that are tests, demos or GUI code rather than library documentation.
_SKIPPED = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "tkinter"}
_MIN_DOCSTRING_CHARS = 40
_MIN_DOCUMENTS = 100


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
    """The documents of the default corpus, in a fixed order (read once per process: about 4 s of parsing)."""
    return list(_documents())


@functools.cache
def _documents() -> tuple[Document, ...]:
    topics, stdlib, modules = _sources()
    key = hashlib.sha256(f"{sys.version}|{stdlib}".encode())
    for path in [topics, *modules]:
        stat = path.stat()
        key.update(f"|{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cached = cache_dir() / "corpus" / f"{key.hexdigest()[:24]}.json"
    try:
        documents = tuple(Document(name, text) for name, text in json.loads(cached.read_text(encoding="utf-8")))
        if len(documents) >= _MIN_DOCUMENTS and all(isinstance(d.text, str) for d in documents):
            return documents
    except (OSError, ValueError, TypeError):
        pass  # not built yet, or unreadable: build it again
    documents = _read(stdlib, modules)
    try:
        with atomic_file(cached, "w") as f:
            json.dump([[d.name, d.text] for d in documents], f)  # ASCII: every character escaped
    except OSError:
        pass  # a read-only cache directory: the corpus is parsed again next time
    return documents


def _sources() -> tuple[Path, Path, list[Path]]:
    """The file of the Language Reference topics, the standard library's folder and its modules that are read."""
    import pydoc_data.topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = [p for p in sorted(stdlib.rglob("*.py")) if not _SKIPPED.intersection(p.relative_to(stdlib).parts)]
    return Path(pydoc_data.topics.__file__), stdlib, modules


def _read(stdlib: Path, modules: list[Path]) -> tuple[Document, ...]:
    """The documents, parsed from the files."""
    import pydoc_data.topics

    documents = [Document(f"topic:{name}", text.strip()) for name, text in sorted(pydoc_data.topics.topics.items())]
    for path in modules:
        text = _module_docstrings(path)
        if text:
            documents.append(Document(f"module:{path.relative_to(stdlib).as_posix()}", text))
    if len(documents) < _MIN_DOCUMENTS:
        raise RuntimeError(
            f"the embedded corpus found only {len(documents)} documents under {stdlib} (a Python "
            "installation without its .py sources?); set data.path to a text file or folder instead"
        )
    return tuple(documents)
