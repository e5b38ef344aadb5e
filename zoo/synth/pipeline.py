"""DESIGNER's pipeline (arXiv:2508.12726; notes §3.3), stage by stage, each stage's output in the work directory
(:mod:`zoo.synth.store`: resumable, a killed run continues where it stopped):

====  ==============  =====================================================================================
 00   bank            the question bank (:mod:`zoo.synth.sources`)
 01   annotate        LLM: discipline, difficulty (Easy … Very Hard), question type
 02   select          K-means per discipline (K by silhouette), equal per cluster, Very Hard:Hard:Medium = 3:2:1
 03   extract         LLM: each selected question's design logic, a Mermaid flowchart (parsed, validated)
 04   dedup           similarity graph of the logics (τ = 0.85), connected components, each one's centroid
 05   sources         source segments; a segment without a discipline gets the nearest bank discipline's
 06   retrieve        coarse ranking: the top-5 logics of each segment by cosine, within its discipline
 07   generate        LLM: fine ranking (choose one of the 5) and a question that follows it, with a reference
 08   minhash         near-duplicate questions removed (datasketch MinHash, Jaccard >= 0.7 on word 3-grams)
 09   decontaminate   questions sharing a word 13-gram with a benchmark file removed
 10   answer          LLM: a long reasoning answer, ``<think>…</think>`` then the answer
====  ==============  =====================================================================================

The result, ``sft.jsonl`` (``problem``, ``answer``, ``solution``, plus the logic, source and discipline), is what
``zoo fit method=sft data.task=math data.path=<workdir>/sft.jsonl`` trains on; ``report.md`` holds the counts and
times of every stage. A malformed LLM answer is counted and asked again with a new seed at
``retry_temperature``; an item still malformed after its retries is kept out (and counted).

Choices where the paper is silent (stated here and in docs/methods/designer.md): a segment's discipline, when its
row does not give one, is the discipline whose bank questions' mean embedding is nearest (the paper used a trained
classifier); logics are embedded by their steps in order, joined with arrows; MinHash keeps the first of each group.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from zoo.errors import ConfigError, DataError, require_int
from zoo.io.files import atomic_file, is_temporary, read_utf8
from zoo.synth import prompts, sources
from zoo.synth.store import StageStore

STAGES = (
    "bank",
    "annotate",
    "select",
    "extract",
    "dedup",
    "sources",
    "retrieve",
    "generate",
    "minhash",
    "decontaminate",
    "answer",
)
SELECTORS = {"llm": "backend", "embedder": "kind"}  # the setting that picks a section's backend
RUNTIME_KEYS = {  # settings a rerun may change without changing what the stages compute
    "llm": ("concurrency", "retries", "backoff", "timeout", "batch_size", "device", "api_key_env", "cache"),
    "embedder": ("batch_size", "device"),
}


def item_seed(seed: int, stage: str, item: str, attempt: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{stage}/{item}/{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


@dataclass
class Item:
    id: str
    prompt: str
    context: Any = None


def _sample(items: list, limit: int | None, seed: int) -> list:
    """A seeded sample of ``limit`` of ``items`` in their own order (all of them without a limit)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Pipeline:
    def __init__(self, config: dict, workdir: str | Path, log: Callable[[str], None] = print) -> None:
        self.config, self.workdir, self.log = config, Path(workdir), log
        self.seed = int(config["seed"])
        self.summaries: dict[str, dict] = {}
        self._embedded: dict[tuple[str, str], torch.Tensor] = {}

    # -- backends, built when a stage first needs them --------------------------------------------------------
    @cached_property
    def llm(self):
        from zoo.synth.llm import build_llm

        return build_llm(self.config["llm"])

    @cached_property
    def embedder(self):
        from zoo.synth.embedders import build_embedder

        return build_embedder(self.config["embedder"])

    def embed(self, texts: list[str], role: str) -> torch.Tensor:
        """Embeddings of ``texts`` in their ``role`` (:data:`zoo.synth.embedders.ROLES`: an instruction-aware
        embedder prompts each role its own way); each distinct text is embedded once a run and role (stages share
        the bank's)."""
        missing = list(dict.fromkeys(t for t in texts if (role, t) not in self._embedded))
        if missing:
            vectors = self.embedder.embed(missing, role)
            self._embedded.update(((role, t), v) for t, v in zip(missing, vectors, strict=True))
        return torch.stack([self._embedded[role, t] for t in texts]) if texts else torch.zeros(0, 1)

    # -- stages --------------------------------------------------------------------------------------------
    def store(self, name: str) -> StageStore:
        return StageStore(self.workdir / f"{STAGES.index(name):02d}_{name}")

    def _whole(self, name: str, compute: Callable[[], tuple[list[dict], dict]]) -> list[dict]:
        store = self.store(name)
        if store.finished:
            self.summaries[name] = store.summary()
            return store.records()
        self.log(f"[{name}] ...")
        start = time.perf_counter()
        records, summary = compute()
        store.write(records)
        summary = {"stage": name, **summary, "out": len(records), "seconds": round(time.perf_counter() - start, 2)}
        store.finish(summary)
        self.summaries[name] = summary
        self.log(f"[{name}] {summary['in']} in, {summary['out']} out, {summary['seconds']} s")
        return records

    def _llm_stage(
        self, name: str, items: list[Item], parse: Callable[[str, Item], dict], settings: dict
    ) -> list[dict]:
        """One LLM call per item (batched, retried on malformed answers); appended batch by batch."""
        store = self.store(name)
        if store.finished:
            self.summaries[name] = store.summary()
            return [r for r in store.records() if r["ok"]]
        done = {r["id"] for r in store.records()}
        pending = [item for item in items if item.id not in done]
        self.log(f"[{name}] {len(items)} items, {len(done)} done before, {len(pending)} to go")
        start = time.perf_counter()
        retries, batch_size = int(settings["retries"]), int(settings["batch_size"])
        for batch in _batches(pending, batch_size):
            results: dict[str, dict] = {}
            todo, errors = list(batch), {}
            for attempt in range(retries + 1):
                temperature = settings["temperature"] if attempt == 0 else settings["retry_temperature"]
                seeds = [item_seed(self.seed, name, item.id, attempt) for item in todo]
                texts = self.llm.complete([i.prompt for i in todo], int(settings["max_tokens"]), temperature, seeds)
                failed = []
                for item, text in zip(todo, texts, strict=True):
                    try:
                        results[item.id] = {"id": item.id, "ok": True, "attempts": attempt + 1, **parse(text, item)}
                    except prompts.Malformed as e:
                        errors[item.id] = (str(e), text[:400])
                        failed.append(item)
                todo = failed
                if not todo:
                    break
            for item in todo:
                error, raw = errors[item.id]
                results[item.id] = {"id": item.id, "ok": False, "attempts": retries + 1, "error": error, "raw": raw}
            store.append(results[item.id] for item in batch)
        records = store.records()
        by_id = {r["id"]: r for r in records}
        ok = [by_id[i.id] for i in items if by_id[i.id]["ok"]]
        summary = {
            "stage": name,
            "in": len(items),
            "out": len(ok),
            "failed": len(items) - len(ok),
            "malformed_answers": sum(r["attempts"] - (1 if r["ok"] else 0) for r in records),
            "llm_calls": sum(r["attempts"] for r in records),
            "resumed_with": len(done),
            "seconds": round(time.perf_counter() - start, 2),
        }
        store.finish(summary)
        self.summaries[name] = summary
        self.log(f"[{name}] {summary['out']} ok, {summary['failed']} failed, {summary['malformed_answers']} malformed")
        return ok

    # -- the run ------------------------------------------------------------------------------------------------
    def discard_stale_stages(self) -> None:
        """Every stage after the first unfinished one was computed from what that stage held before: delete them
        (they run again). A killed run has none; a stage whose items were lost or changed after it finished has."""
        for i, name in enumerate(STAGES):
            store = self.store(name)
            if store.finished:
                continue
            if store.recorded:
                self.log(f"[{name}] its items do not match its record (lost or changed): it and later stages rerun")
            for later in STAGES[i + 1 :]:
                shutil.rmtree(self.store(later).directory, ignore_errors=True)
            return

    def run(self) -> Path:
        self.discard_stale_stages()
        cfg = self.config
        taxonomy = cfg["taxonomy"]
        bank = self._whole("bank", self._bank)
        by_id = {q["id"]: q for q in bank}

        def annotation(text: str, item: Item) -> dict:
            a = prompts.parse_annotation(text, taxonomy["disciplines"], taxonomy["types"])
            return {"discipline": a.discipline, "difficulty": a.difficulty, "type": a.type}

        template = annotation_prompt(taxonomy)
        items = [Item(q["id"], template.replace("{question}", q["text"])) for q in bank]
        annotated = self._llm_stage("annotate", items, annotation, cfg["annotate"])
        selected = self._whole("select", lambda: self._select(annotated, by_id))

        def logic(text: str, item: Item) -> dict:
            mermaid, steps = prompts.parse_logic(text, int(cfg["extract"]["min_steps"]))
            return {"logic": mermaid, "steps": steps, "discipline": item.context}

        with_answer = cfg["extract"]["with_answer"]
        items = [
            Item(q["id"], prompts.extract_prompt(q["text"], q.get("answer") if with_answer else None), q["discipline"])
            for q in selected
        ]
        logics = self._llm_stage("extract", items, logic, cfg["extract"])
        kept = self._whole("dedup", lambda: self._dedup(logics))
        segments = self._whole("sources", lambda: self._sources(annotated, by_id))
        retrieved = self._whole("retrieve", lambda: self._retrieve(segments, kept))
        logic_by_id = {r["id"]: r for r in kept}

        def generated(text: str, item: Item) -> dict:
            g = prompts.parse_generated(text, len(item.context["candidates"]))
            chosen = item.context["candidates"][g.choice]
            return {
                "question": g.question,
                "answer": g.answer,
                "logic": chosen,
                "source": item.id,
                "discipline": logic_by_id[chosen]["discipline"],
            }

        items = [
            Item(r["id"], prompts.generate_prompt(r["text"], [logic_by_id[c]["logic"] for c in r["candidates"]]), r)
            for r in retrieved
            if r["candidates"]
        ]
        questions = self._llm_stage("generate", items, generated, cfg["generate"])
        unique = self._whole("minhash", lambda: self._minhash(questions))
        clean = self._whole("decontaminate", lambda: self._decontaminate(unique))

        def long_answer(text: str, item: Item) -> dict:
            thinking, answer = prompts.parse_long_answer(text)
            q = item.context
            return {
                "problem": q["question"],
                "answer": q["answer"],
                "solution": f"<think>\n{thinking}\n</think>\n\n{answer}",
                "final": answer,
                "logic": q["logic"],
                "source": q["source"],
                "discipline": q["discipline"],
            }

        items = [Item(q["id"], prompts.ANSWER.format(question=q["question"]), q) for q in clean]
        answered = self._llm_stage("answer", items, long_answer, cfg["answer"])
        return self._finish(answered)

    def _bank(self) -> tuple[list[dict], dict]:
        bank = sources.load_bank(list(self.config["bank"]["files"]))
        picked = _sample(bank, self.config["bank"]["limit"], self.seed)
        return [{"id": q.id, "text": q.text, "answer": q.answer} for q in picked], {"in": len(bank)}

    def _select(self, annotated: list[dict], by_id: dict) -> tuple[list[dict], dict]:
        from zoo.synth.selection import select

        settings = self.config["select"]
        embeddings = self.embed([by_id[a["id"]]["text"] for a in annotated], "question").double().numpy()
        chosen, cluster_of, clusters = select(
            embeddings,
            [a["discipline"] for a in annotated],
            [a["difficulty"] for a in annotated],
            int(settings["total"]),
            list(settings["k"]),
            self.seed,
            int(settings["silhouette_sample"]),
        )
        records = [{**by_id[annotated[i]["id"]], **annotated[i], "cluster": cluster_of[i]} for i in chosen]
        for r in records:
            r.pop("ok"), r.pop("attempts")
        return records, {"in": len(annotated), "clusters": clusters}

    def _steps_text(self, record: dict) -> str:
        return " -> ".join(record["steps"])

    def _dedup(self, logics: list[dict]) -> tuple[list[dict], dict]:
        from zoo.synth.dedup import deduplicate_embeddings

        settings = self.config["dedup"]
        embeddings = self.embed([self._steps_text(r) for r in logics], "logic")
        keep = deduplicate_embeddings(
            embeddings, [r["discipline"] for r in logics], float(settings["threshold"]), bool(settings["inclusive"])
        )
        records = [{k: logics[i][k] for k in ("id", "logic", "steps", "discipline")} for i in keep]
        return records, {"in": len(logics), "removed": len(logics) - len(keep)}

    def _sources(self, annotated: list[dict], by_id: dict) -> tuple[list[dict], dict]:
        settings = self.config["sources"]
        segments = sources.load_segments(
            list(settings["files"]), int(settings["max_words"]), int(settings["min_words"])
        )
        total = len(segments)
        segments = _sample(segments, settings["limit"], self.seed + 1)
        missing = [s for s in segments if s.discipline is None]
        assigned: dict[str, str] = {}
        if missing and annotated:
            names = sorted({a["discipline"] for a in annotated})
            bank = self.embed([by_id[a["id"]]["text"] for a in annotated], "question").double()
            centroids = torch.stack(
                [bank[[i for i, a in enumerate(annotated) if a["discipline"] == n]].mean(0) for n in names]
            )
            centroids = torch.nn.functional.normalize(centroids, dim=1)
            nearest = (self.embed([s.text for s in missing], "segment").double() @ centroids.T).argmax(1).tolist()
            assigned = {s.id: names[k] for s, k in zip(missing, nearest, strict=True)}
        records = [{"id": s.id, "text": s.text, "discipline": s.discipline or assigned.get(s.id)} for s in segments]
        return records, {"in": total}

    def _retrieve(self, segments: list[dict], logics: list[dict]) -> tuple[list[dict], dict]:
        from zoo.synth.retrieval import top_k

        settings = self.config["retrieve"]
        if not logics:
            return [{**s, "candidates": [], "scores": []} for s in segments], {"in": len(segments)}
        within = bool(settings["within_discipline"])
        ranked = top_k(
            self.embed([s["text"] for s in segments], "segment"),
            self.embed([self._steps_text(r) for r in logics], "logic"),
            int(settings["top_k"]),
            [s["discipline"] for s in segments] if within else None,
            [r["discipline"] for r in logics] if within else None,
        )
        records = [
            {**s, "candidates": [logics[i]["id"] for i, _ in ranks], "scores": [round(v, 6) for _, v in ranks]}
            for s, ranks in zip(segments, ranked, strict=True)
        ]
        return records, {"in": len(segments)}

    def _minhash(self, questions: list[dict]) -> tuple[list[dict], dict]:
        from zoo.synth.near_duplicates import near_duplicates

        s = self.config["minhash"]
        dropped = near_duplicates(
            [q["question"] for q in questions], float(s["threshold"]), int(s["ngram"]), int(s["num_perm"]), self.seed
        )
        removed = [{"id": questions[i]["id"], "duplicate_of": questions[j]["id"]} for i, j in dropped.items()]
        self._removed("minhash", removed)
        kept = [q for i, q in enumerate(questions) if i not in dropped]
        return kept, {"in": len(questions), "removed": len(removed)}

    def _decontaminate(self, questions: list[dict]) -> tuple[list[dict], dict]:
        from zoo.synth.decontamination import BenchmarkIndex

        s = self.config["decontaminate"]
        index = BenchmarkIndex(int(s["n"]))
        indexed = {str(path): index.add_file(path, list(s["fields"])) for path in s["files"]}
        kept, removed = [], []
        for q in questions:
            origin = index.match([q["question"], q["answer"]])
            if origin is None:
                kept.append(q)
            else:
                removed.append({"id": q["id"], "benchmark": origin})
        self._removed("decontaminate", removed)
        return kept, {"in": len(questions), "removed": len(removed), "benchmark_texts": indexed}

    def _removed(self, name: str, removed: list[dict]) -> None:
        store = self.store(name)
        store.directory.mkdir(parents=True, exist_ok=True)
        StageStore(store.directory / "removed").write(removed)

    def _finish(self, answered: list[dict]) -> Path:
        out = self.workdir / "sft.jsonl"
        with atomic_file(out, "w") as f:
            for r in answered:
                f.write(json.dumps({k: v for k, v in r.items() if k not in ("ok", "attempts")}) + "\n")
        report = [self.summaries[name] for name in STAGES]
        with atomic_file(self.workdir / "report.json", "w") as f:
            json.dump(report, f, indent=2)
        (self.workdir / "report.md").write_text(markdown_report(report) + "\n")
        return out


def annotation_prompt(taxonomy: dict) -> str:
    """The annotation prompt of a taxonomy, with ``{question}`` still to fill."""
    disciplines, types = ", ".join(taxonomy["disciplines"]), ", ".join(taxonomy["types"])
    return prompts.ANNOTATE.format(question="{question}", disciplines=disciplines, types=types)


def default_taxonomy() -> dict:
    from importlib import resources

    from omegaconf import OmegaConf

    default = OmegaConf.create((resources.files("zoo.configs") / "synth" / "default.yaml").read_text())
    return OmegaConf.to_container(default.taxonomy)


def markdown_report(report: list[dict]) -> str:
    lines = [
        "| stage | in | out | removed | malformed answers | failed | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report:
        cells = [s.get(k, "") for k in ("in", "out", "removed", "malformed_answers", "failed", "seconds")]
        lines.append(f"| {s['stage']} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# -- configuration ---------------------------------------------------------------------------------------------
def load_config(source: str, overrides: Sequence[str] = ()) -> dict:
    """The pipeline settings: ``configs/synth/default.yaml``, then ``source`` (a name under configs/synth or a
    YAML path), then ``key=value`` overrides. An unknown key is an error naming it."""
    from importlib import resources

    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    folder = resources.files("zoo.configs") / "synth"
    base = OmegaConf.create((folder / "default.yaml").read_text())
    path = Path(source).expanduser()
    if not path.is_file():
        named = folder / f"{source}.yaml"
        if not named.is_file():
            options = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
            raise ConfigError(f"no synth config {source!r}: not a file, nor one of {', '.join(options)}")
        text = named.read_text()
    else:
        text = read_utf8(path)
    try:
        user = OmegaConf.create(text)
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise ConfigError(f"{source}: not a valid config ({' '.join(str(e).split())[:200]})") from None
    if not OmegaConf.is_dict(user):
        raise ConfigError(f"{source}: a synth config is a mapping of settings")
    for layer in (user, dotlist):
        _check_keys(OmegaConf.to_container(layer), OmegaConf.to_container(base), "")
        for section, selector in SELECTORS.items():  # another backend: the defaults of the first do not apply
            if section in layer and selector in layer[section] and layer[section][selector] != base[section][selector]:
                base[section] = OmegaConf.create({})
        base = OmegaConf.merge(base, layer)
    config = OmegaConf.to_container(base, resolve=True)
    if config.get("workdir") in (None, "???"):
        raise ConfigError("workdir must be set, e.g. workdir=synth/run1")
    _check_settings(config)
    return config


LLM_STAGES = ("annotate", "extract", "generate", "answer")
INTEGERS = {  # setting: its minimum
    "seed": 0, "select.total": 0, "select.silhouette_sample": 2, "extract.min_steps": 1, "retrieve.top_k": 1,
    "minhash.ngram": 1, "minhash.num_perm": 2, "decontaminate.n": 1, "sources.max_words": 1, "sources.min_words": 0,
    **{f"{stage}.{key}": low for stage in LLM_STAGES
       for key, low in (("batch_size", 1), ("retries", 0), ("max_tokens", 1))},
}  # fmt: skip
LIMITS = ("bank.limit", "sources.limit")  # null, or an integer >= 1
NUMBERS = {  # setting: (lowest, highest, lowest allowed itself)
    "dedup.threshold": (-1.0, 1.0, True), "minhash.threshold": (0.0, 1.0, False),
    **{f"{stage}.{key}": (0.0, math.inf, True) for stage in LLM_STAGES for key in ("temperature", "retry_temperature")},
}  # fmt: skip
SWITCHES = ("dedup.inclusive", "retrieve.within_discipline", "extract.with_answer")
TEXT_LISTS = {  # setting: may it be empty
    "taxonomy.disciplines": False, "taxonomy.types": False, "bank.files": False, "sources.files": False,
    "decontaminate.files": True, "decontaminate.fields": False,
}  # fmt: skip


def _check_settings(config: dict) -> None:
    """Settings no stage can work with are one-line errors naming them, before anything runs (an LLM stage may
    take hours to reach the stage that reads a setting). A single text where a list of texts goes is that list
    of one (``bank.files=bank.jsonl``)."""

    def get(key: str):
        section, _, name = key.rpartition(".")
        return config[section][name] if section else config[name]

    def put(key: str, value) -> None:
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value

    for key, minimum in INTEGERS.items():
        require_int(key, get(key), minimum)
    for key in LIMITS:
        if get(key) is not None:
            require_int(key, get(key), 1)
    for key, (low, high, closed) in NUMBERS.items():
        value = get(key)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not (low <= value if closed else low < value) or not value <= high:
            bounds = f"in {'[' if closed else '('}{low:g}, {high:g}]" if high < math.inf else f">= {low:g}"
            raise ConfigError(f"{key} must be a number {bounds}, got {value!r}")
    for key in SWITCHES:
        if not isinstance(get(key), bool):
            raise ConfigError(f"{key} must be true or false, got {get(key)!r}")
    for key, may_be_empty in TEXT_LISTS.items():
        value = [get(key)] if isinstance(get(key), str) else get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"{key} must be a list of names, e.g. [a, b], got {get(key)!r}")
        if not value and not may_be_empty:
            raise ConfigError(f"{key} must not be empty")
        put(key, value)
    k = get("select.k")
    if not isinstance(k, list) or not k or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in k):
        raise ConfigError(f"select.k must be a list of cluster counts >= 1, e.g. [2, 4, 8], got {k!r}")


def _check_keys(layer: dict, base: dict, prefix: str) -> None:
    for key, value in layer.items():
        if key not in base:
            raise ConfigError(f"unknown synth setting {prefix}{key}")
        if prefix == "" and key in ("llm", "embedder"):
            continue  # checked by the backend's own settings
        if isinstance(value, dict) and isinstance(base[key], dict):
            _check_keys(value, base[key], f"{prefix}{key}.")


OUTPUTS = ("config.json", "sft.jsonl", "report.json", "report.md")  # besides the stage folders


def stage_folders() -> list[str]:
    return [f"{i:02d}_{name}" for i, name in enumerate(STAGES)]


def restart(config: dict, workdir: Path) -> None:
    """Delete what the pipeline wrote into ``workdir`` (its settings, stage folders and outputs) and nothing else: a
    workdir that holds one of the run's input files, or anything the pipeline did not write, is refused, naming
    it."""
    if not workdir.exists():
        return
    if not workdir.is_dir():
        raise ConfigError(f"workdir={workdir}: not a directory")
    root = workdir.resolve()
    inputs = [*config["bank"]["files"], *config["sources"]["files"], *config["decontaminate"]["files"]]
    for spec in inputs:
        path = Path(spec).expanduser().resolve()
        if spec != sources.EMBEDDED and (path == root or root in path.parents):
            raise DataError(
                f"--restart would delete {spec}, an input of this run inside workdir={workdir}: keep the inputs "
                "outside the work directory"
            )
    ours = {*OUTPUTS, *stage_folders()}
    foreign = sorted(p.name for p in workdir.iterdir() if p.name not in ours and not is_temporary(p.name))
    if foreign:
        more = " …" if len(foreign) > 3 else ""
        raise DataError(
            f"--restart deletes only what the pipeline wrote, and workdir={workdir} also holds "
            f"{', '.join(foreign[:3])}{more}: use a work directory of its own"
        )
    for child in workdir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def check_workdir(config: dict, workdir: Path) -> None:
    """Save the settings with a new work directory; refuse to continue one made with other settings, and a
    work directory that cannot be written."""
    saved = workdir / "config.json"
    if not saved.is_file():
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            with atomic_file(saved, "w") as f:
                json.dump(config, f, indent=2)
        except OSError as e:
            raise ConfigError(f"workdir={workdir}: cannot write there ({e.strerror or e})") from None
        return
    try:
        before = json.loads(read_utf8(saved))
    except json.JSONDecodeError as e:
        raise DataError(f"{saved}: not valid JSON ({e.msg}; damaged): --restart to start over") from None
    if not isinstance(before, dict):
        raise DataError(f"{saved}: not the settings of a run (damaged): --restart to start over")
    for key in sorted(set(before) | set(config)):
        a, b = before.get(key), config.get(key)
        if key in RUNTIME_KEYS and isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k not in RUNTIME_KEYS[key]}
            b = {k: v for k, v in b.items() if k not in RUNTIME_KEYS[key]}
        if a != b:
            raise DataError(
                f"{workdir} was made with other {key} settings ({a} then, {b} now): "
                "use another workdir, or --restart to start it over"
            )
