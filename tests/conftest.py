import contextlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.models.gpt_neox import KVCache

# Tests never reach a hub: without this every lookup hangs for tens of seconds before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A tiny model and short blocks: a CLI run takes seconds on 2 cores. The width settings fit every model
# family; the plain stack also takes a depth.
TINY_WIDTH = [
    "model.hidden_size=32",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "data.seq_len=64",
    "data.batch_size=8",
    "data.vocab_size=512",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
TINY_OVERRIDES = [*TINY_WIDTH, "model.num_hidden_layers=2"]


@pytest.fixture
def tiny() -> list[str]:
    """Overrides that make ``zoo fit`` train a tiny model on short blocks."""
    return list(TINY_OVERRIDES)


@pytest.fixture
def tiny_width() -> list[str]:
    """Overrides that shrink any model family (plain, recursive, MeSH) and its data for a seconds-long run."""
    return list(TINY_WIDTH)


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory) -> Path:
    """One cache for the session: the embedded corpus is tokenized (and its BPE trained) once."""
    return tmp_path_factory.mktemp("zoo_cache")


@pytest.fixture(autouse=True)
def zoo_env(zoo_cache, tmp_path, monkeypatch) -> dict[str, str]:
    """Every test has its own hub store and the session's cache: nothing lands in the user's directories."""
    monkeypatch.setenv("ZOO_CACHE", str(zoo_cache))
    monkeypatch.setenv("ZOO_HUB", str(tmp_path / "hub"))
    return dict(os.environ)


@contextlib.contextmanager
def root_logging_restored():
    """A run in this process (``zoo.cli.main``) lets Hydra configure logging: handlers that write to the test's
    captured output and to the run's ``cli.log``, which may be deleted with a discarded run. Put the root logger
    back afterwards, so that no later test logs into a closed capture or a deleted file."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _root_logging_restored():
    with root_logging_restored():
        yield


def _run_zoo(args, cwd, env, timeout=300, check=True) -> subprocess.CompletedProcess:
    process = subprocess.run(
        [sys.executable, "-m", "zoo", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and process.returncode != 0:
        raise AssertionError(f"zoo {' '.join(args)} failed ({process.returncode}):\n{process.stderr[-3000:]}")
    return process


def _run_zoo_here(args, cwd, check=True) -> subprocess.CompletedProcess:
    """``zoo ARGS`` in this process (a new Python process costs about 4 s of imports), its output and exit status
    captured as a process's would be."""
    from zoo.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(cwd)
        try:
            main(list(args))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    process = subprocess.CompletedProcess(["zoo", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"zoo {' '.join(args)} failed ({code}):\n{process.stderr[-3000:]}")
    return process


@pytest.fixture
def run_zoo(zoo_env, tmp_path):
    """Run the ``zoo`` command in ``tmp_path`` as a user would (``process=True``: as a new process; otherwise in
    this process, which runs the same code); returns the finished process."""

    def run(*args: str, timeout: float = 300, check: bool = True, process: bool = False) -> subprocess.CompletedProcess:
        # several devices: Lightning starts the other ranks by running the same command line again, which in this
        # process is pytest's
        several = any(a.startswith("trainer.devices=") and a.split("=", 1)[1] not in ("1", "auto") for a in args)
        if process or several:
            return _run_zoo(args, tmp_path, zoo_env, timeout, check)
        return _run_zoo_here(args, tmp_path, check)

    return run


@pytest.fixture(scope="session")
def trained_run(zoo_cache, tmp_path_factory) -> Path:
    """The run directory of one short ``zoo fit`` of the tiny model, shared by the tests that only read it."""
    cwd = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch, root_logging_restored():
        patch.setenv("ZOO_CACHE", str(zoo_cache))
        patch.setenv("ZOO_HUB", str(cwd / "hub"))
        _run_zoo_here(["fit", *TINY_OVERRIDES, "debug=limit", "name=tiny"], cwd)
    (hydra,) = list((cwd / "runs" / "tiny").rglob(".hydra"))
    return hydra.parent


@pytest.fixture
def shared_data():
    """``shared_data("gsm8k/test.jsonl")``: a path under ../shared/data, or a skip that says it is absent."""

    def find(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            pytest.skip(f"{path} is absent (the shared data sets live beside the project in CI, not in a checkout)")
        return path

    return find


@pytest.fixture
def cpu_trainer(tmp_path):
    """``cpu_trainer(**settings)``: an in-process CPU Trainer without logger, progress bar, summary, checkpoints
    or sanity validation (what the module tests fit with); ``settings`` override any of those."""
    import lightning as L

    def make(**settings) -> L.Trainer:
        quiet = dict(
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            default_root_dir=tmp_path,
        )
        return L.Trainer(**{**quiet, **settings})

    return make


# ChatML, as Qwen's chat models render conversations
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HF_ARCHITECTURES = {  # tiny random-weight configs of two architectures zoo does not implement itself
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                word_embed_proj_dim=32),  # learned positions; does not find packed examples from positions itself
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4),  # ALiBi: no 4D masks, so no packed rows
}  # fmt: skip


def save_tiny_hf_model(directory: Path, model_type: str, chat: bool, seed: int = 0, **config) -> Path:
    """A tiny random-weight transformers causal LM of ``model_type`` (``config`` overrides its settings) with a BPE
    tokenizer trained on arithmetic prompts (with ChatML special tokens and template when ``chat``), saved as a
    Hugging Face model directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from zoo.tasks.registry import arithmetic_problems
    from zoo.text.tokenizer import train_bpe

    tokenizer = train_bpe([p.prompt + p.solution for p in arithmetic_problems(2000, seed=7)], vocab_size=258)
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**HF_ARCHITECTURES[model_type], **config},
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny HF models: ``llama`` (no chat template), ``qwen2`` (ChatML, tied embeddings) and ``opt``."""
    root = tmp_path_factory.mktemp("hf_models")
    return {
        "llama": save_tiny_hf_model(root / "tiny-llama", "llama", chat=False),
        "qwen2": save_tiny_hf_model(root / "tiny-qwen2", "qwen2", chat=True),
        "opt": save_tiny_hf_model(root / "tiny-opt", "opt", chat=False),
    }


# Every zoo model at a tiny size (vocabulary 97), for the tests that hold for each of them.
TINY_MODEL = dict(
    vocab_size=97, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64
)
ZOO_MODELS = {
    "gpt_neox": dict(arch="gpt_neox", num_hidden_layers=3, **TINY_MODEL),
    "recursive": dict(arch="recursive", layout="1+2R2+1", recurrence="anchor", **TINY_MODEL),
    "mesh": dict(arch="mesh", layout="1+2R3+1", **TINY_MODEL),
    "llama": dict(arch="llama", num_hidden_layers=2, num_key_value_heads=2, **TINY_MODEL),
    "qwen3": dict(arch="llama", num_hidden_layers=2, num_key_value_heads=1, head_dim=16, qk_norm=True, **TINY_MODEL),
}


@pytest.fixture(params=list(ZOO_MODELS))
def zoo_model_settings(request) -> dict:
    """The settings of one tiny zoo model of each architecture (the test runs once per architecture)."""
    return dict(ZOO_MODELS[request.param])


# Tiny policies of the Llama family for the rollout system's tests (vocabulary 64, the tokenizers the tests train):
# grouped-query attention with llama3-style rope theta, and Qwen3's q/k norms, explicit head size and tied head.
LLAMA_FAMILY = {
    "llama": dict(arch="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, rope_theta=500000.0),
    "qwen3": dict(arch="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16, qk_norm=True, tie_word_embeddings=True, intermediate_size=64,
                  max_position_embeddings=64),
}  # fmt: skip


@pytest.fixture(params=list(LLAMA_FAMILY))
def llama_family_policy(request) -> dict:
    """A tiny random Llama or Qwen3 policy config (the test runs once with each)."""
    return dict(LLAMA_FAMILY[request.param])


@pytest.fixture
def tiny_hf_model(tmp_path):
    """``tiny_hf_model(model_type, chat=False, **config)``: a tiny HF model of any architecture in HF_ARCHITECTURES
    (``config`` overrides its settings), saved under ``tmp_path`` for this test alone."""

    def make(model_type: str, chat: bool = False, **config) -> Path:
        return save_tiny_hf_model(tmp_path / model_type, model_type, chat, **config)

    return make


class ScriptedLengths(torch.nn.Module):
    """A stand-in policy for the native engine whose completions have random lengths set by their prompt: every
    step a row emits EOS (token 0) with probability 1 / d, where d is its prompt's last token, else token 1. The
    engine samples these from its seeded row streams, so its own quota logic decides which prompts complete. The
    prefill stores d in the row's KV cache (every column); a decode step reads it back from column 0."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(2, 1)  # the engine reads its device and dtype from here

    def new_cache(self, batch_size, max_length, dtype=None, device=None):
        return KVCache(1, batch_size, 1, max_length, 1, dtype=dtype or torch.float32, device=device)

    def hidden_states(self, ids, position_ids=None, attention_mask=None, cache=None):
        difficulty = ids[:, -1].float()
        cache.keys[0, :, 0, : ids.shape[1], 0] = difficulty[:, None]
        return difficulty[:, None, None].expand(-1, ids.shape[1], 1)

    def decode_step(self, tokens, positions, valid, cache):
        keys, _ = cache.update(0, torch.zeros(len(tokens), 1, 1, 1), torch.zeros(len(tokens), 1, 1, 1))
        return self.lm_head(keys[:, 0, 0, :])

    def lm_head(self, hidden):
        stop = 1 / hidden[:, 0]
        return torch.stack([stop.log(), (1 - stop).clamp(min=1e-6).log()], dim=-1)


@pytest.fixture
def scripted_lengths() -> type[ScriptedLengths]:
    return ScriptedLengths
