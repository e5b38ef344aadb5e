"""DESIGNER's pipeline end to end against a real local server (the HTTP backend): stage counts, the record
schema, planted duplicates and contamination, malformed answers, a SIGKILL mid-stage and the rerun, bad
settings."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo.errors import ConfigError, DataError
from zoo.synth.pipeline import STAGES, Pipeline, check_workdir, load_config, restart
from zoo.synth.store import StageStore
from zoo.tasks.registry import math_problems

WORDS = "river stone garden lamp window paper copper silver forest harbour meadow valley engine signal market".split()


def _bank(path, count=60):
    rng = random.Random(0)
    rows = []
    for i in range(count):
        a, b, c = rng.randint(2, 90), rng.randint(2, 90), rng.randint(2, 9)
        if i % 3 == 0:
            rows.append({"question": f"Which compound did the chemist number {i} discover near the {WORDS[i % 15]}?"})
        else:
            extra = " Then she buys 3 more, gives away 2, and sells the rest at 4 each." * (i % 4)
            text = f"A {WORDS[i % 15]} shop has {a} items and gets {b} more every {c} days.{extra} How many in total?"
            rows.append({"question": text, "answer": f"#### {a + b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sources(path, count=24):
    rng = random.Random(1)
    rows = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(40)]
        rows.append({"id": f"s{i}", "text": f"Segment {i} says " + " ".join(words)})
    rows[7]["text"] = rows[3]["text"].upper() + " AND MORE"  # a planted near duplicate
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture
def inputs(tmp_path):
    _bank(tmp_path / "bank.jsonl")
    rows = _sources(tmp_path / "sources.jsonl")
    planted = "What does the text say about " + " ".join(rows[11]["text"].split()[:10]) + "?"  # a benchmark copy
    (tmp_path / "bench.jsonl").write_text(json.dumps({"problem": planted}) + "\n")
    return tmp_path


def _overrides(inputs, server, workdir, **more) -> list[str]:
    settings = {
        "workdir": str(workdir),
        "bank.files": f"[{inputs / 'bank.jsonl'}]",
        "sources.files": f"[{inputs / 'sources.jsonl'}]",
        "sources.min_words": 5,
        "llm.backend": "http",
        "llm.base_url": server.url,
        "llm.model": "canned",
        "llm.cache": "null",
        "llm.backoff": 0.01,
        "select.total": 30,
        "select.k": "[2,3,4]",
        "decontaminate.files": f"[{inputs / 'bench.jsonl'}]",
        "annotate.batch_size": 8,
        **more,
    }
    return [f"{k}={v}" for k, v in settings.items()]


def _run(inputs, server, workdir, **more):
    config = load_config("default", _overrides(inputs, server, workdir, **more))
    check_workdir(config, workdir)
    return Pipeline(config, workdir, log=lambda _: None).run()


def test_the_pipeline_runs_end_to_end_with_counts_that_add_up(inputs, canned_server):
    workdir = inputs / "run"
    with canned_server(malformed={2, 5}) as server:
        out = _run(inputs, server, workdir)
        generate_body = next(b for b in server.bodies if "Candidate design logics" in b["messages"][0]["content"])
    report = {s["stage"]: s for s in json.loads((workdir / "report.json").read_text())}
    assert list(report) == list(STAGES)
    assert report["bank"]["out"] == 60 and report["annotate"]["in"] == 60
    assert report["annotate"]["malformed_answers"] == 2 and report["annotate"]["out"] == 60  # both asked again
    assert report["annotate"]["llm_calls"] == 62
    chain = [("annotate", "select"), ("select", "extract"), ("extract", "dedup"), ("sources", "retrieve")]
    chain += [("retrieve", "generate"), ("generate", "minhash"), ("minhash", "decontaminate")]
    chain += [("decontaminate", "answer")]
    for before, after in chain:
        assert report[before]["out"] == report[after]["in"], (before, after)
    assert report["select"]["out"] == 30 and report["sources"]["out"] == 24
    assert report["minhash"]["removed"] == 1 and report["decontaminate"]["removed"] == 1
    removed = StageStore(workdir / "08_minhash" / "removed").records()
    source = inputs / "sources.jsonl"
    assert removed == [{"id": f"{source}:s7#0", "duplicate_of": f"{source}:s3#0"}]
    contaminated = StageStore(workdir / "09_decontaminate" / "removed").records()
    assert contaminated == [{"id": f"{source}:s11#0", "benchmark": f"{inputs / 'bench.jsonl'}:1"}]

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == report["answer"]["out"] == 22
    logics = {r["id"]: r for r in StageStore(workdir / "04_dedup").records()}
    for row in rows:
        assert set(row) >= {"problem", "answer", "solution", "logic", "source", "discipline"}
        assert row["solution"].startswith("<think>\n") and "\n</think>\n\n" in row["solution"]
        assert row["logic"] in logics
    # the generation prompt holds the segment and its retrieved logics, numbered, as dedup kept them
    prompt = generate_body["messages"][0]["content"]
    retrieved = {r["id"]: r for r in StageStore(workdir / "06_retrieve").records()}
    segment = next(r for r in retrieved.values() if r["text"] in prompt)
    same = [i for i, r in logics.items() if r["discipline"] == segment["discipline"]]
    assert len(segment["candidates"]) == min(5, len(same)) >= 2 and set(segment["candidates"]) <= set(same)
    for number, logic_id in enumerate(segment["candidates"], start=1):
        assert f"[{number}]\n```mermaid\n{logics[logic_id]['logic']}\n```" in prompt
    problems = math_problems(out)  # what data=sft with data.task=math reads
    assert len(problems) == 22 and problems[0].solution.strip() == rows[0]["solution"]


def test_a_sigkill_mid_stage_loses_at_most_the_batch_in_flight(inputs, canned_server, zoo_env):
    with canned_server() as server:
        reference = _run(inputs, server, inputs / "reference").read_text()
        server.by_kind.clear()
        server.delay = 0.05
        workdir = inputs / "killed"
        args = ["synth", "run", "default", *_overrides(inputs, server, workdir, **{"llm.concurrency": 1})]
        process = subprocess.Popen([sys.executable, "-m", "zoo", *args], env=zoo_env, stdout=subprocess.DEVNULL)
        items = workdir / "01_annotate" / "items.jsonl"
        deadline = time.time() + 120
        while not (items.is_file() and len(items.read_text().splitlines()) >= 16) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        done = len(items.read_text().splitlines())
        assert 16 <= done < 60 and not (workdir / "01_annotate" / "stage.json").exists()
        asked_before = server.by_kind["annotate"]
        server.delay = 0.0
        out = _run(inputs, server, workdir, **{"llm.concurrency": 1})
    assert asked_before - done <= 8  # at most one batch (annotate.batch_size) was in flight and lost
    assert server.by_kind["annotate"] == asked_before + (60 - done)  # the rerun asked only for the rest
    assert out.read_text() == reference  # the same data as a run that was never stopped


def test_a_stage_is_done_only_when_its_items_verify_against_its_record(inputs, canned_server):
    """A finished stage whose items were lost, or whose record is damaged, runs again with every stage after it:
    the output is the uninterrupted run's, never an empty file under a report that claims otherwise."""
    workdir = inputs / "run"
    with canned_server() as server:
        reference = _run(inputs, server, workdir).read_text()
        rows = len(reference.splitlines())
        assert rows > 0
        (workdir / "10_answer" / "items.jsonl").unlink()  # stage.json stays
        answers = server.by_kind["answer"]
        assert _run(inputs, server, workdir).read_text() == reference
        assert server.by_kind["answer"] == answers + rows  # asked again, not taken as done
        report = {s["stage"]: s for s in json.loads((workdir / "report.json").read_text())}
        assert report["answer"]["out"] == rows
        answered = workdir / "10_answer" / "items.jsonl"
        answered.write_text("".join(answered.read_text().splitlines(keepends=True)[: rows // 2]))  # rows lost
        answers = server.by_kind["answer"]
        assert _run(inputs, server, workdir).read_text() == reference
        assert server.by_kind["answer"] == answers + rows - rows // 2  # only the lost ones asked again
        (workdir / "04_dedup" / "stage.json").write_text("{damaged")
        generated = server.by_kind["generate"]
        assert _run(inputs, server, workdir).read_text() == reference
        assert server.by_kind["generate"] > generated  # the stages after dedup ran again too
        items = workdir / "03_extract" / "items.jsonl"
        items.write_bytes(items.read_bytes().replace(b"{", b"\xff{", 1))  # not UTF-8 any more
        with pytest.raises(DataError, match=r"03_extract/items.jsonl: not UTF-8 at byte 0 \(a damaged stage file\)"):
            _run(inputs, server, workdir)


def test_restart_deletes_only_what_the_pipeline_wrote(run_zoo, inputs, canned_server):
    """--restart in a folder that holds the run's inputs, or anything the pipeline did not write, is refused and
    deletes nothing; in the pipeline's own work directory it clears what it wrote."""
    with canned_server() as server:
        overrides = _overrides(inputs, server, ".")
        before = sorted(p.name for p in inputs.iterdir())
        for where in (inputs, inputs / "run"):
            failed = run_zoo("synth", "run", "default", *overrides, f"workdir={where}", "--restart", check=False)
            if where == inputs:
                assert failed.returncode == 2 and "an input of this run inside workdir" in failed.stderr
        assert sorted(p.name for p in inputs.iterdir()) == sorted([*before, "run"])  # nothing lost
        workdir = inputs / "run"
        assert (workdir / "sft.jsonl").is_file()
        (workdir / "notes.txt").write_text("mine")
        failed = run_zoo("synth", "run", "default", *overrides, f"workdir={workdir}", "--restart", check=False)
        assert failed.returncode == 2 and "also holds notes.txt" in failed.stderr
        assert (workdir / "notes.txt").read_text() == "mine" and (workdir / "sft.jsonl").is_file()
        (workdir / "notes.txt").unlink()
        config = load_config("default", _overrides(inputs, server, workdir))
        restart(config, workdir)
        assert list(workdir.iterdir()) == []


def test_a_work_directory_that_cannot_be_written_or_read_is_one_line(inputs, tmp_path):
    config = load_config("default", ["workdir=w", "llm.model=x"])
    (tmp_path / "file").write_text("x")
    for where, message in [
        (tmp_path / "file" / "run", "cannot write there"),
        (tmp_path / "file", "cannot write there"),
        (Path("/proc/zoo-synth-run"), "cannot write there"),
    ]:
        with pytest.raises(ConfigError, match=f"workdir={re.escape(str(where))}: {message}"):
            check_workdir(config, where)
    with pytest.raises(ConfigError, match="not a directory"):
        restart(config, tmp_path / "file")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("")
    with pytest.raises(DataError, match=r"run/config.json: not valid JSON .*--restart"):
        check_workdir(config, tmp_path / "run")


def test_ctrl_c_ends_the_run_at_once_in_one_line(inputs, canned_server, zoo_env):
    """Ctrl-C while requests hang: the process ends in seconds with one line, keeping what was done."""
    with canned_server(hang=range(1, 1000)) as server:
        args = ["synth", "run", "default", *_overrides(inputs, server, inputs / "run")]
        process = subprocess.Popen([sys.executable, "-m", "zoo", *args], env=zoo_env, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while server.requests < 8 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGINT)
        start = time.perf_counter()
        _, stderr = process.communicate(timeout=30)
    assert time.perf_counter() - start < 5 and process.returncode == 130
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("zoo synth: interrupted")
    assert (inputs / "run" / "00_bank" / "stage.json").is_file()


def test_a_torn_last_line_is_dropped_on_resume(tmp_path):
    store = StageStore(tmp_path / "stage")
    store.append([{"id": "a"}, {"id": "b"}])
    with open(store.items_path, "a") as f:
        f.write('{"id": "c", "o')  # a write cut short by a crash
    assert store.records() == [{"id": "a"}, {"id": "b"}]
    store.append([{"id": "c", "text": "a line\u2028separator and a \x1c file separator"}])
    assert [r["id"] for r in store.records()] == ["a", "b", "c"]
    assert store.records()[2]["text"] == "a line\u2028separator and a \x1c file separator"


def test_bad_settings_are_one_line_errors(inputs, canned_server):
    with pytest.raises(ConfigError, match="unknown synth setting select.totl"):
        load_config("default", ["workdir=x", "select.totl=3"])
    with pytest.raises(ConfigError, match="no synth config 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="workdir must be set"):
        load_config("default")
    for setting, message in [
        ("annotate.batch_size=0", "annotate.batch_size must be an integer >= 1"),
        ("extract.retries=-1", "extract.retries must be an integer >= 0"),
        ("answer.temperature=hot", "answer.temperature must be a number >= 0"),
        ("minhash.threshold=1.5", "minhash.threshold must be a number in (0, 1]"),
        ("minhash.threshold=abc", "minhash.threshold must be a number in (0, 1], got 'abc'"),
        ("dedup.threshold=2", "dedup.threshold must be a number in [-1, 1]"),
        ("dedup.threshold=abc", "dedup.threshold must be a number in [-1, 1], got 'abc'"),
        ("select.k=[]", "select.k must be a list"),
        ("select.k=3", "select.k must be a list of cluster counts >= 1, e.g. [2, 4, 8], got 3"),
        ("retrieve.top_k=0", "retrieve.top_k must be an integer >= 1"),
        ("seed=abc", "seed must be an integer >= 0, got 'abc'"),
        ("bank.limit=-3", "bank.limit must be an integer >= 1, got -3"),
        ("sources.limit=abc", "sources.limit must be an integer >= 1, got 'abc'"),
        ("taxonomy.disciplines=[]", "taxonomy.disciplines must not be empty"),
        ("taxonomy.types=[a, 3]", "taxonomy.types must be a list of names"),
        ("dedup.inclusive=maybe", "dedup.inclusive must be true or false"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config("default", ["workdir=x", setting])
    assert load_config("default", ["workdir=x", "bank.files=bank.jsonl"])["bank"]["files"] == ["bank.jsonl"]
    broken = inputs / "broken.yaml"
    broken.write_bytes(b"workdir: caf\xe9\n")  # latin-1
    with pytest.raises(DataError, match="broken.yaml: not UTF-8 text"):
        load_config(str(broken))
    broken.write_text("workdir: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not a valid config"):
        load_config(str(broken))
    broken.write_text("- a list\n")
    with pytest.raises(ConfigError, match="a mapping of settings"):
        load_config(str(broken))
    with canned_server() as server:
        workdir = inputs / "run"
        check_workdir(load_config("default", _overrides(inputs, server, workdir)), workdir)
        changed = load_config("default", _overrides(inputs, server, workdir, **{"select.total": 31}))
        with pytest.raises(DataError, match="made with other select settings"):
            check_workdir(changed, workdir)
        check_workdir(load_config("default", _overrides(inputs, server, workdir, **{"llm.concurrency": 2})), workdir)
        (inputs / "a").mkdir()
        (inputs / "b").mkdir()
        for folder in ("a", "b"):  # one file name in two folders: two banks, distinct ids
            (inputs / folder / "test.jsonl").write_text('{"question": "What is 1 + 1?"}\n')
        from zoo.synth.sources import load_bank

        ids = [q.id for q in load_bank([str(inputs / "a" / "test.jsonl"), str(inputs / "b" / "test.jsonl")])]
        assert ids == [f"{inputs / 'a' / 'test.jsonl'}:1", f"{inputs / 'b' / 'test.jsonl'}:1"]
        with pytest.raises(DataError, match="occurs twice"):
            load_bank([str(inputs / "a" / "test.jsonl")] * 2)
        bad_row = inputs / "bad.jsonl"
        bad_row.write_text('{"question": "ok"}\n{"answer": "no question"}\n')
        with pytest.raises(DataError, match="bad.jsonl:2: no field 'question' or 'problem'"):
            _run(inputs, server, inputs / "other", **{"bank.files": f"[{bad_row}]"})


def test_the_synth_command_line(run_zoo, tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} plus {i * 7}?"}) + "\n" for i in range(40)))
    one = tmp_path / "one.jsonl"
    one.write_text('{"question": "alone"}\n')
    out = tmp_path / "metrics.json"
    shown = run_zoo("synth", "metrics", str(data), "--embedder", "hashing", "--k", "4", "--json", str(out))
    figures = json.loads(out.read_text())[str(data)]
    assert figures["n"] == 40 and 0 < figures["mean_cosine_distance"] < 1 and figures["kmeans_inertia"] > 0
    assert "nearest_neighbour_distance" in shown.stdout
    for args, message in [
        (["run", "default", "workdir=w", "select.totl=3"], "unknown synth setting select.totl"),
        (["run", "default", "workdir=w"], "llm.model must be set"),
        (["metrics", str(tmp_path / "none.jsonl"), "--embedder", "hashing"], "not found"),
        (["metrics", str(data), "--embedder", "hashing", "--k", "0"], "--k must be >= 1"),
        (["metrics", str(one), "--embedder", "hashing"], "1 text; the pairwise metrics need at least 2"),
        (["metrics", str(data), "--embedder", "hashing", "--json", "/nonexistent/m.json"], "--json /nonexistent"),
    ]:
        failed = run_zoo("synth", *args, check=False)
        assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0, failed.stderr
        assert message in failed.stderr


@pytest.mark.parametrize("text", ["What is 2 plus 2?", "?!.,"])
def test_metrics_of_identical_texts(run_zoo, tmp_path, text):
    """50 copies of one text (or of punctuation, which embeds like any empty text): no spread at all."""
    data = tmp_path / "same.jsonl"
    data.write_text((json.dumps({"question": text}) + "\n") * 50)
    out = tmp_path / "m.json"
    run_zoo("synth", "metrics", str(data), "--embedder", "hashing", "--json", str(out))
    figures = json.loads(out.read_text())[str(data)]
    assert figures["n"] == 50 and figures["kmeans_inertia"] == 0 and figures["mean_l2_distance"] == 0


def test_choosing_another_backend_drops_the_defaults_of_the_first():
    config = load_config("default", ["workdir=w", "embedder.kind=sentence-transformers", "llm.backend=http"])
    assert config["embedder"] == {"kind": "sentence-transformers"}
    assert config["llm"] == {"backend": "http"}
    assert load_config("default", ["workdir=w"])["embedder"] == {"kind": "hashing", "dim": 384}


def test_an_llm_that_never_answers_in_form_leaves_an_empty_result_not_a_crash(inputs, canned_server):
    workdir = inputs / "run"
    with canned_server(malformed=set(range(1, 1000))) as server:
        out = _run(inputs, server, workdir, **{"annotate.retries": 1})
    assert out.read_text() == ""
    report = {s["stage"]: s for s in json.loads((workdir / "report.json").read_text())}
    assert report["annotate"]["failed"] == 60 and report["annotate"]["malformed_answers"] == 120
    assert report["select"]["out"] == 0 and report["answer"]["in"] == 0
    failed = StageStore(workdir / "01_annotate").records()[0]
    assert failed["ok"] is False and failed["error"] == "no 'Discipline:' line" and failed["raw"] == "I cannot do that."


def test_a_server_that_fails_for_good_stops_the_stage_and_keeps_what_was_done(inputs, canned_server):
    workdir = inputs / "run"
    with canned_server(status=503) as server:
        with pytest.raises(Exception, match=r"POST .*: HTTP 503 \(canned failure\), after 2 attempt"):
            _run(inputs, server, workdir, **{"llm.retries": 1})
    assert not (workdir / "01_annotate" / "stage.json").exists() and (workdir / "00_bank" / "stage.json").exists()
