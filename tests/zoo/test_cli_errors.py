"""Every bad input a user can give the command line ends in one line that names the key or file, exit status 2,
no traceback, and no run directory left behind."""

import json

import pytest
import torch


def _files(tmp_path):
    """Bad inputs on disk, by name."""
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait, ".encode("latin-1") * 50)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "control.jsonl").write_text('{"text": "ok"}\n{"text": "a\tb"}\n')
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    (tmp_path / "truncated.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    rl = {"hyper_parameters": {"model": {}, "rollout": {}, "algorithm": {}}, "state_dict": {}}
    torch.save(rl, tmp_path / "rl.ckpt")  # what an RL run writes, read as pretraining
    (tmp_path / "a_file").write_text("in the way")


CASES = [
    # (arguments, what the line says)
    (["fit", "model=pythia-7t"], "unknown model 'pythia-7t'"),
    (["fit", "model=grpo"], "unknown model 'grpo': grpo is a method, chosen apart from the network: method=grpo"),
    (["fit", "trainer.max_stepz=5"], "unknown key 'trainer.max_stepz' (to add"),
    (
        ["fit", "method=grpo", "module.micro_batch_tokens=512"],
        "unknown key 'module.micro_batch_tokens'; did you mean module.algorithm.micro_batch_tokens?",
    ),
    (["fit", "data.path=missing.txt"], "data.path not found"),
    (["fit", "+data.colour=red"], "colour"),
    (["fit", "trainer.max_steps=abc"], "trainer.max_steps=abc: expected a number"),
    (["fit", "data.batch_size=abc"], "data.batch_size=abc: expected a number"),
    (["fit", "module.optim.lr=fast"], "module.optim.lr=fast: expected a number"),
    (["fit", "trainer.enable_progress_bar=maybe"], "expected true or false"),
    (["fit", "data.seq_len=0"], "data.seq_len must be an integer >= 1, got 0"),
    (["fit", "data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    (["fit", "data.batch_size=-4"], "data.batch_size must be an integer >= 1, got -4"),
    (["fit", "trainer.max_steps=-2"], "trainer.max_steps must be an integer >= -1, got -2"),
    (["fit", "module.optim.lr=-0.1"], "module.optim.lr must be a number >= 0"),
    (["fit", "model.num_hidden_layers=0"], "model.num_hidden_layers must be an integer >= 1, got 0"),
    (["fit", "model.max_position_embeddings=32", "data.seq_len=64"], "data.seq_len=64 exceeds"),
    (["fit", "method=grpo", "module.rollout.max_new_tokens=100", "model.max_position_embeddings=64"], "exceeds"),
    (["fit", "trainer=gpu"], "needs a CUDA device"),
    (["fit", "checkpoint.every_n_minutes=abc"], "checkpoint.every_n_minutes must be a number > 0 or null"),
    (["fit", "checkpoint.every_n_minutes=-1"], "checkpoint.every_n_minutes must be a number > 0 or null, got -1"),
    (["fit", "method=grpo", "module.algorithm.reward_timeout_s=0"], "module.algorithm.reward_timeout_s must be > 0"),
    (["fit", "method=grpo", "module.algorithm.max_skipped_steps=-1"], "max_skipped_steps must be an integer >= 0"),
    (["fit", "hydra.run.dir={tmp}/a_file/run"], "cannot create the run directory"),
    (["fit", "data.path={tmp}/latin1.txt"], "latin1.txt: not UTF-8 text (byte offset 3"),
    (["fit", "data.path={tmp}/latin1.jsonl"], "latin1.jsonl: not UTF-8 text (byte offset 28"),
    (["fit", "data.path={tmp}/empty.jsonl"], "empty.jsonl: the file is empty"),
    (["fit", "data.path={tmp}/empty.txt"], "empty.txt: the file is empty"),
    (["fit", "data.path={tmp}/control.jsonl"], "control.jsonl:2: not valid JSON (Invalid control character at column"),
    (["validate", "ckpt_path={tmp}/notes.ckpt"], "notes.ckpt: not a readable checkpoint"),
    (["validate", "ckpt_path={tmp}/truncated.ckpt"], "truncated.ckpt: not a readable checkpoint"),
    (["validate", "ckpt_path={tmp}/list.ckpt"], "list.ckpt: not a checkpoint"),
    (["validate", "ckpt_path={tmp}/missing.ckpt"], "checkpoint not found"),
    (
        ["validate", "ckpt_path={tmp}/rl.ckpt"],
        "rl.ckpt: a module with algorithm, rollout settings, not a PretrainModule",
    ),
    (["hub", "pull", "{tmp}/nowhere"], "not a directory"),
    (["hub", "show", "a..b"], "invalid hub name"),
    (["fit", "method=sft", "data.train_size=8"], "fewer than one batch of 8 per rank"),
    (["fit", "method=grpo", "rollout.schedule=fifo"], "rollout.schedule 'fifo' is not one of batch, queue"),
    (["fit", "method=grpo", "rollout.extra_prompts=3"], "need rollout.schedule=queue"),
]


def _settings(args, tiny):
    """The tiny-model settings a case does not set itself (none for the hub, and the RL task keeps its own)."""
    given = {a.split("=")[0] for a in args}
    if args[0] == "hub" or "method=grpo" in args:
        return []
    return [t for t in tiny if t.split("=")[0] not in given]


@pytest.mark.parametrize("args, says", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_ends_in_one_line(tiny, tmp_path, monkeypatch, capsys, args, says):
    """In this process (``zoo.cli.main``, as the console script calls it), to keep the table fast; the test
    below runs a few of the cases as real processes."""
    from zoo.cli import main

    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit) as exit_:
        main([*args, *_settings(args, tiny)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("zoo: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and says in errors[0], err
    assert not (tmp_path / "runs").exists()  # nothing left behind


@pytest.mark.parametrize("index", [4, 8, 22, 27], ids=lambda i: " ".join(CASES[i][0]))
def test_as_a_process_the_line_is_all_there_is(run_zoo, tiny, tmp_path, index):
    args, says = CASES[index]
    _files(tmp_path)
    args = [a.format(tmp=tmp_path) for a in args]
    process = run_zoo(*args, *_settings(args, tiny), check=False)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("zoo: error:")]
    assert len(errors) == 1 and process.stderr.rstrip().endswith(errors[0]) and says in errors[0]
    assert not (tmp_path / "runs").exists()


def test_a_model_called_past_its_positions_names_the_limit():
    from zoo.errors import ConfigError
    from zoo.models import GPTNeoX, GPTNeoXConfig

    model = GPTNeoX(
        GPTNeoXConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=8,
        )
    )
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ConfigError, match="9 tokens exceeds the model's max_position_embeddings=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_json_errors_are_not_cut(tmp_path):
    from zoo.errors import DataError
    from zoo.io.jsonl import read_jsonl

    (tmp_path / "rows.jsonl").write_text(json.dumps({"a": 1}) + '\n{"a": }\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: not valid JSON \(Expecting value at column 7\)"):
        read_jsonl(tmp_path / "rows.jsonl")


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x1c", "\x0c"])
def test_json_strings_may_hold_any_line_separator_raw(tmp_path, run_zoo, separator):
    """A valid row whose string holds a raw U+2028 (or another character ``str.splitlines`` cuts at) reads as one
    row, with CRLF endings too, in the reader every data path shares (data.path, banks, corpora; zoo synth metrics
    here)."""
    from zoo.io.jsonl import read_jsonl

    rows = [{"question": f"What is 2 +{separator}2?", "answer": "4"}, {"question": "And 3 + 3?", "answer": "6"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", newline="")
    assert [(n, r) for n, r in read_jsonl(path)] == [(1, rows[0]), (2, rows[1])]
    bank = run_zoo("synth", "metrics", str(path), "--embedder", "hashing", "--k", "1")
    assert "Traceback" not in bank.stderr and bank.returncode == 0
