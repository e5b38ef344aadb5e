"""The checkpoint hub: publish a trained model, list and inspect what is published, import and export.

An *entry* is a directory named after the checkpoint::

    NAME/
      manifest.json       name, arch, source, creation time, and the sha256 of every other file
      config.json         zoo's model config (``arch`` + the config dataclass's fields)
      model.safetensors   the weights, zoo's parameter names
      tokenizer/          the tokenizer, in the HF format (``AutoTokenizer`` loads it)
      card.md             a model card: YAML front matter with the training metrics and data, then prose

A Hugging Face model of an architecture zoo does not implement (``arch: hf``, :mod:`zoo.models.hf`) keeps its
own format instead of ``model.safetensors``: ``hf/`` holds the transformers directory (config, weights,
generation config) as transformers writes it, and ``config.json`` is ``{"arch": "hf", "model_type": ...}``.

Entries live in the hub *store* (``$ZOO_HUB``, else ``<zoo cache>/hub``) and, read-only, in the registry that
ships with zoo (``zoo.checkpoints``). Every read verifies every sha256 and refuses an entry with a missing,
altered or unlisted file. Weights are read with safetensors only; Lightning checkpoints and ``pytorch_model.bin``
with ``torch.load(weights_only=True)`` passed explicitly, which unpickles tensors and plain containers only.

Import: a local directory in the HF format (``config.json``, safetensors or ``pytorch_model.bin`` weights,
tokenizer files), or ``hf:ORG/NAME`` downloaded through ``huggingface_hub``. A model of a family zoo implements
(GPT-NeoX; Llama, Qwen2, Qwen3, Mistral) becomes a zoo ``gpt_neox`` or ``llama`` entry (zoo's own implementation,
every engine) unless ``--impl hf``; any other causal LM transformers can build becomes an ``hf`` entry, its files
copied unchanged once transformers has loaded them with no weight missing or misshapen. Export: an entry of a
GPT-NeoX, Llama-family or hf model to the HF format.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save, save_file

from zoo import __version__
from zoo.errors import ConfigError, ZooError, first_line
from zoo.io.checkpoint_io import read_checkpoint
from zoo.io.files import atomic_directory, atomic_file, cache_dir, sha256_file
from zoo.io.rebuilt_state import check_rebuilt_from

TIED_HEAD = "lm_head.weight"  # a tied output head: the embedding's tensor, stored once under embed.weight
IMPLEMENTATIONS = ("auto", "native", "hf")  # model.impl: who implements a Hugging Face directory's model
MANIFEST = "manifest.json"
HF_DIRECTORY = "hf"  # an hf entry's transformers directory
ADAPTER_SETTINGS = "adapter.json"  # an adapter entry's LoRA settings and base
ADAPTER_WEIGHTS = "adapter.safetensors"  # its adapters, PEFT's saved names
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class HubError(ZooError):
    """A hub operation that cannot be done; the message says which entry, file or name."""


def validate_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise HubError(
            f"invalid hub name {name!r}: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..', at most 128 characters)"
        )
    return name


def default_store() -> Path:
    return Path(os.environ["ZOO_HUB"]).expanduser() if os.environ.get("ZOO_HUB") else cache_dir() / "hub"


def builtin_registry() -> Path:
    return Path(str(resources.files("zoo.checkpoints")))


@dataclass
class Entry:
    name: str
    path: Path
    manifest: dict[str, Any]
    read_only: bool = False

    @classmethod
    def open(cls, path: Path, read_only: bool = False) -> Entry:
        try:
            manifest = json.loads((path / MANIFEST).read_bytes())
        except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
            raise HubError(f"{path / MANIFEST}: unreadable manifest ({first_line(e)})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise HubError(f"{path / MANIFEST}: no 'files' table")
        return cls(manifest.get("name", path.name), path, manifest, read_only)

    def verify(self) -> None:
        """Raise unless every listed file exists with its sha256 and no other file is present: any file but the
        top-level manifest that the manifest does not list, by relative path, is tampering."""
        listed = self.manifest["files"]
        for relative in listed:
            if not isinstance(relative, str) or relative.startswith("/") or ".." in relative.split("/"):
                raise HubError(f"hub entry {self.name!r}: its manifest lists a path outside the entry: {relative!r}")
        present = {p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if not p.is_dir()}
        if unlisted := sorted(present - set(listed) - {MANIFEST}):
            raise HubError(f"hub entry {self.name!r}: file(s) not in its manifest: {', '.join(unlisted)}")
        for relative, expected in listed.items():
            file = self.path / relative
            if not file.is_file():
                raise HubError(f"hub entry {self.name!r}: {relative} is missing")
            if sha256_file(file) != expected:
                raise HubError(
                    f"hub entry {self.name!r}: {relative} fails its sha256 check (corrupted or altered); "
                    "pull or push it again"
                )

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def card(self) -> str:
        return (self.path / "card.md").read_text()

    @property
    def card_metadata(self) -> dict[str, Any]:
        """The card's YAML front matter (metrics, data, optimizer, ...)."""
        text = self.card
        if not text.startswith("---\n") or "\n---\n" not in text[4:]:
            return {}
        return yaml.safe_load(text[4 : text.index("\n---\n", 4)]) or {}

    @property
    def is_hf(self) -> bool:
        return self.config.get("arch") == "hf"

    @property
    def model_config(self) -> dict[str, Any]:
        """The config that builds this entry's model (an hf entry's points at its ``hf/`` directory)."""
        if self.is_hf:
            return {"arch": "hf", "path": str(self.path / HF_DIRECTORY)}
        return self.config

    @property
    def adapter(self) -> dict[str, Any] | None:
        """An adapter entry's settings (``base``, ``base_manifest_sha256``, ``r``, ``alpha``, ...); None for a full
        entry."""
        file = self.path / ADAPTER_SETTINGS
        if not file.is_file():
            return None
        try:
            settings = json.loads(file.read_bytes())
        except (OSError, ValueError) as e:
            raise HubError(f"hub entry {self.name!r}: unreadable {ADAPTER_SETTINGS} ({first_line(e)})") from None
        needed = ("base", "base_manifest_sha256", "r", "alpha")
        if not isinstance(settings, dict) or not all(k in settings for k in needed):
            raise HubError(f"hub entry {self.name!r}: {ADAPTER_SETTINGS} lacks one of {', '.join(needed)}")
        from zoo.training.lora import lora_settings

        lora = {k: v for k, v in settings.items() if k not in ("base", "base_manifest_sha256")}
        try:
            if lora_settings(lora, key=ADAPTER_SETTINGS) is None:
                raise HubError(f"{ADAPTER_SETTINGS}.r must be an integer >= 1, got {lora['r']!r}")
        except ZooError as e:
            raise HubError(f"hub entry {self.name!r}: {first_line(e)}") from None
        if not isinstance(settings["base"], str) or not isinstance(settings["base_manifest_sha256"], str):
            raise HubError(f"hub entry {self.name!r}: {ADAPTER_SETTINGS} names its base with texts")
        return settings

    def base_entry(self, adapter: dict[str, Any]) -> Entry:
        """An adapter entry's base (``adapter``: its settings), verified, and refused if it is not the entry the
        adapters were trained on."""
        base = resolve_entry(adapter["base"])
        digest = sha256_file(base.path / MANIFEST)
        if digest != adapter["base_manifest_sha256"]:
            raise HubError(
                f"hub entry {self.name!r}: its base {adapter['base']} has changed since the adapters were trained "
                f"(manifest sha256 {digest[:12]}..., expected {adapter['base_manifest_sha256'][:12]}...)"
            )
        return base

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights, zoo's names; an adapter entry's merged into its base's."""
        self.verify()
        adapter = self.adapter
        if adapter is None:
            state = load_file(self.path / "model.safetensors")
            if self.config.get("tie_word_embeddings"):  # stored once, as the embedding
                state[TIED_HEAD] = state["embed.weight"]
            return state
        from zoo.training.lora import merge_adapters

        base = self.base_entry(adapter).state_dict()
        return merge_adapters(base, load_file(self.path / ADAPTER_WEIGHTS), adapter["alpha"] / adapter["r"])

    def build_model(self) -> torch.nn.Module:
        from zoo.models import build_model, config_from_dict

        model = build_model(config_from_dict(self.model_config))
        if not self.is_hf:  # an hf model loads its own weights from hf/
            model.load_state_dict(self.state_dict())
        return model


class Hub:
    def __init__(self, store: str | os.PathLike | None = None, registries: tuple[Path, ...] | None = None) -> None:
        self.store = Path(store).expanduser() if store else default_store()
        self.registries = registries if registries is not None else (builtin_registry(),)

    # -- reading ----------------------------------------------------------------------------------------
    def entries(self) -> list[Entry | HubError]:
        found: list[Entry | HubError] = []
        for root, read_only in [(self.store, False), *((r, True) for r in self.registries)]:
            if not root.is_dir():
                continue
            # hidden names are the temporaries of pushes in progress or killed: never entries
            for path in sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()):
                try:
                    found.append(Entry.open(path, read_only))
                except HubError as e:
                    found.append(e)
        return found

    def entry(self, name: str) -> Entry:
        validate_name(name)
        for root, read_only in [(self.store, False), *((r, True) for r in self.registries)]:
            if (root / name / MANIFEST).is_file():
                entry = Entry.open(root / name, read_only)
                entry.verify()
                return entry
        known = [e.name for e in self.entries() if isinstance(e, Entry)]
        raise HubError(f"no hub entry {name!r} in {self.store}; known: {', '.join(known) or 'none'}")

    # -- writing ----------------------------------------------------------------------------------------
    def _write(
        self,
        name: str,
        config: dict[str, Any],
        weights: dict[str, torch.Tensor] | Path,
        tokenizer_dir: Path | None,
        card: dict[str, Any],
        source: str,
        overwrite: bool,
        adapter: dict[str, Any] | None = None,
    ) -> Entry:
        """Write entry ``name``: zoo-named ``weights`` (checked against ``config``), or for an hf model the
        transformers directory ``weights`` whose model files are copied into ``hf/``; with ``adapter`` (its
        settings and base), ``weights`` are LoRA adapters, checked by merging them into the base."""
        validate_name(name)
        target = self.store / name
        if (target / MANIFEST).exists() and not overwrite:
            raise HubError(f"hub entry {name!r} exists in {self.store}; pass --force to replace it")
        if isinstance(weights, Path):
            parameters = check_hf_directory(weights, source)
        elif adapter is not None:
            from zoo.training.lora import merge_adapters

            base = resolve_entry(adapter["base"]).state_dict()
            check_weights(config, merge_adapters(base, weights, adapter["alpha"] / adapter["r"]), source)
            parameters = sum(t.numel() for t in weights.values())
        else:
            check_weights(config, weights, source)
            if config.get("tie_word_embeddings"):  # the head is the embedding: stored once
                weights = {k: v for k, v in weights.items() if k != TIED_HEAD}
            parameters = sum(t.numel() for t in weights.values())
        with atomic_directory(target) as tmp:
            if adapter is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / ADAPTER_WEIGHTS)
                (tmp / ADAPTER_SETTINGS).write_text(json.dumps(adapter, indent=2) + "\n")
            elif isinstance(weights, Path):
                (tmp / HF_DIRECTORY).mkdir()
                for file in _hf_model_files(weights):
                    shutil.copyfile(file, tmp / HF_DIRECTORY / file.name)
            else:
                save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            if tokenizer_dir is not None:
                (tmp / "tokenizer").mkdir()
                for file in _TOKENIZER_FILES:
                    if (tokenizer_dir / file).is_file():
                        shutil.copyfile(tokenizer_dir / file, tmp / "tokenizer" / file)
            front = {"name": name, "arch": config["arch"], "parameters": parameters, "source": source, **card}
            (tmp / "card.md").write_text(_card_text(front))
            files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {
                "name": name,
                "arch": config["arch"],
                "source": source,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "zoo_version": __version__,
                "files": files,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return self.entry(name)

    def push(self, source: str | os.PathLike, name: str, overwrite: bool = False) -> Entry:
        """Publish a run directory (its ``checkpoints/last.ckpt``) or a Lightning ``.ckpt`` file."""
        validate_name(name)
        checkpoint_path, run_dir = _locate_checkpoint(Path(source).expanduser())
        checkpoint = read_checkpoint(checkpoint_path)
        hparams = checkpoint["hyper_parameters"]
        adapter = _adapter_of_run(hparams.get("model") or {}, checkpoint)
        if adapter is not None:
            settings, adapters = adapter
            config = {k: v for k, v in dict(hparams["model"]).items() if k not in ("init_from", "lora")}
            return self._publish_run(
                name, config, adapters, checkpoint, hparams, checkpoint_path, run_dir, overwrite, settings
            )
        config, state = _model_state(checkpoint, checkpoint_path)
        with tempfile.TemporaryDirectory(prefix="zoo-push-") as scratch:
            weights: dict[str, torch.Tensor] | Path = state
            if config.get("arch") == "hf":  # written the way transformers writes it, then copied into the entry
                weights = Path(scratch)
                config = _save_hf_run(config, state, checkpoint_path, weights)
            return self._publish_run(name, config, weights, checkpoint, hparams, checkpoint_path, run_dir, overwrite)

    def _publish_run(
        self, name, config, weights, checkpoint, hparams, checkpoint_path, run_dir, overwrite, adapter=None
    ) -> Entry:
        tokenizer_dir = run_dir / "tokenizer" if run_dir and (run_dir / "tokenizer").is_dir() else None
        metrics_file = run_dir / "metrics.json" if run_dir else None
        metrics = json.loads(metrics_file.read_text()) if metrics_file and metrics_file.is_file() else {}
        card = {
            "command": _training_command(run_dir),
            "global_step": checkpoint.get("global_step"),
            "tokens_seen": checkpoint.get("tokens_seen"),
            "metrics": metrics,
            "data": _plain(checkpoint.get("datamodule_hyper_parameters", {})),
            "optim": _plain(hparams.get("optim") or {}),
        }
        if adapter is not None:
            card["lora"] = {k: v for k, v in adapter.items() if k not in ("base", "base_manifest_sha256")}
            card["base"] = adapter["base"]
        source = str(checkpoint_path.resolve())
        return self._write(name, config, weights, tokenizer_dir, card, source, overwrite, adapter)

    def merge(self, name: str, new_name: str, overwrite: bool = False) -> Entry:
        """Write adapter entry ``name`` merged into its base as the full entry ``new_name``."""
        entry = self.entry(name)
        if entry.adapter is None:
            raise HubError(f"hub entry {name!r} holds full weights, not adapters: nothing to merge")
        tokenizer = entry.tokenizer_dir if entry.tokenizer_dir.is_dir() else None
        card = {**entry.card_metadata, "merged_from": name}
        for key in ("name", "arch", "parameters", "source"):
            card.pop(key, None)
        return self._write(new_name, entry.config, entry.state_dict(), tokenizer, card, f"hub:{name}", overwrite)

    def pull(self, source: str, name: str | None = None, overwrite: bool = False, impl: str = "auto") -> Entry:
        """Import ``hf:ORG/NAME`` (downloaded), a local directory (HF format, or a copied hub entry: zoo's own model
        where it implements the family (``impl``, :func:`native_model_type`), else an ``hf`` entry) or a GGUF file
        of the Llama family (a llama entry)."""
        if source.endswith(".gguf"):
            return self._pull_gguf(Path(source).expanduser(), name, overwrite)
        if source.startswith("hf:"):
            repo_id = source[3:]
            directory = _download_hf(repo_id)
            default_name = repo_id.rsplit("/", 1)[-1]
        else:
            directory = Path(source).expanduser()
            if not directory.is_dir():
                raise HubError(f"{directory}: not a directory (pull takes a local model directory or hf:ORG/NAME)")
            default_name = directory.name
        name = validate_name(name or default_name)
        if (directory / MANIFEST).is_file():
            entry = Entry.open(directory)
            entry.verify()
            card = {"imported_from": str(directory)}
            tokenizer = entry.tokenizer_dir if entry.tokenizer_dir.is_dir() else None
            weights = entry.path / HF_DIRECTORY if entry.is_hf else entry.state_dict()
            return self._write(name, entry.config, weights, tokenizer, card, source, overwrite)
        tokenizer = directory if any((directory / f).is_file() for f in _TOKENIZER_FILES) else None
        from zoo.models.hf import model_type

        if not native_model_type(directory, impl, key="--impl"):  # kept in transformers' format
            config = {"arch": "hf", "model_type": model_type(directory)}
            return self._write(name, config, directory, tokenizer, {"imported_from": source}, source, overwrite)
        config, state = _read_hf_directory(directory)
        return self._write(name, config, state, tokenizer, {"imported_from": source}, source, overwrite)

    def _pull_gguf(self, path: Path, name: str | None, overwrite: bool) -> Entry:
        """A GGUF file of the Llama family as a llama entry: dequantized weights, its tokenizer and chat template."""
        from zoo.hub.convert import read_gguf

        if not path.is_file():
            raise HubError(f"{path}: no such GGUF file")
        name = validate_name(name or path.name.removesuffix(".gguf"))
        with tempfile.TemporaryDirectory() as tokenizer_dir:
            config, state = read_gguf(path, Path(tokenizer_dir))
            card = {"imported_from": str(path), "dequantized_from": "gguf"}
            return self._write(name, config, state, Path(tokenizer_dir), card, str(path), overwrite)

    def export_hf(self, name: str, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write entry ``name`` as an HF model directory that ``AutoModelForCausalLM`` loads. A directory that
        already holds files is refused unless ``overwrite``, and then only the files written here are replaced:
        nothing else in it is touched."""
        from zoo.hub.convert import config_to_hf, state_dict_to_hf
        from zoo.models import config_from_dict

        entry = self.entry(name)
        if entry.config.get("arch") not in ("gpt_neox", "llama", "hf"):
            raise HubError(f"hub entry {name!r} is a {entry.config.get('arch')!r} model: only gpt_neox, llama and hf "
                           "models export to HF")  # fmt: skip
        out = Path(out_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise HubError(f"{out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise HubError(f"{out}: not empty; pass --force to overwrite the model files in it (nothing else)")
        if entry.is_hf:
            files = {file.name: file.read_bytes() for file in sorted((entry.path / HF_DIRECTORY).iterdir())}
        else:
            config = config_from_dict(entry.config)
            files = {
                "config.json": (json.dumps(config_to_hf(config), indent=2) + "\n").encode(),
                "model.safetensors": save(state_dict_to_hf(entry.state_dict(), config), {"format": "pt"}),
            }
        if entry.tokenizer_dir.is_dir():
            files |= {file.name: file.read_bytes() for file in sorted(entry.tokenizer_dir.iterdir())}
        for file_name, content in files.items():
            with atomic_file(out / file_name) as f:
                f.write(content)
        return out


def names_entry(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a hub entry (``hub:NAME``, or a directory holding a manifest)."""
    return str(spec).startswith("hub:") or (Path(str(spec)).expanduser() / MANIFEST).is_file()


def resolve_entry(spec: str | os.PathLike) -> Entry:
    """The verified entry named by ``hub:NAME`` or found at an entry directory's path."""
    spec = str(spec)
    if spec.startswith("hub:"):
        return Hub().entry(spec[4:])
    entry = Entry.open(Path(spec).expanduser())
    entry.verify()
    return entry


def native_model_type(directory: Path, impl: str = "auto", key: str = "model.impl") -> bool:
    """Whether the model in a transformers ``directory`` is built by zoo's own implementation: ``auto`` where zoo
    has one (GPT-NeoX, the Llama family), ``native`` (one line where it has none), ``hf`` never."""
    from zoo.hub.convert import NATIVE_MODEL_TYPES
    from zoo.models.hf import model_type

    if impl not in IMPLEMENTATIONS:
        raise ConfigError(f"{key}={impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    found = model_type(directory)
    if impl == "native" and found not in NATIVE_MODEL_TYPES:
        raise ConfigError(f"{key}=native: {directory} holds a {found!r} model; zoo implements "
                          f"{', '.join(NATIVE_MODEL_TYPES)} (model.impl=hf runs it through transformers)")  # fmt: skip
    return impl != "hf" and found in NATIVE_MODEL_TYPES


def starting_point(spec: str, impl: str = "auto") -> tuple[dict[str, Any], Path | None]:
    """What ``model.init_from=spec`` starts from: the config that builds the model, and the tokenizer directory that
    comes with it. ``spec``: ``hub:NAME``, a hub entry directory, or a Hugging Face model directory (or ``ORG/NAME``
    in the local HF cache): zoo's own model where it implements the family (``impl``, :func:`native_model_type`),
    else an ``hf`` model."""
    from zoo.models.hf import resolve_path

    if names_entry(spec):
        entry = resolve_entry(spec)
        return entry.model_config, entry.tokenizer_dir if entry.tokenizer_dir.is_dir() else None
    directory = resolve_path(str(spec), key="model.init_from")
    tokenizer = directory if any((directory / f).is_file() for f in _TOKENIZER_FILES) else None
    if native_model_type(directory, impl):
        return _read_hf_config(directory).to_dict(), tokenizer
    return {"arch": "hf", "path": str(spec)}, tokenizer


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer_dir: Path | None
    data: dict[str, Any]  # the data settings it was trained with, where known


def load_model(source: str | os.PathLike) -> LoadedModel:
    """A model from ``hub:NAME``, a hub entry directory, a run directory or a Lightning ``.ckpt`` file."""
    from zoo.models import build_model, config_from_dict

    path = Path(str(source)).expanduser()
    if names_entry(source):
        entry = resolve_entry(source)
        tokenizer = entry.tokenizer_dir if entry.tokenizer_dir.is_dir() else None
        return LoadedModel(entry.build_model(), tokenizer, entry.card_metadata.get("data") or {})
    checkpoint_path, run_dir = _locate_checkpoint(path)
    checkpoint = read_checkpoint(checkpoint_path)
    config, state = _model_state(checkpoint, checkpoint_path)
    model = build_model(config_from_dict(config))
    model.load_state_dict(state)
    tokenizer = run_dir / "tokenizer" if run_dir and (run_dir / "tokenizer").is_dir() else None
    return LoadedModel(model, tokenizer, checkpoint.get("datamodule_hyper_parameters", {}))


def source_fingerprint(spec: str) -> str:
    """One sha256 for what a model source holds: a hub entry's manifest sha256 (which lists every file's, verified
    here), or the sha256 of a Hugging Face directory's config and weight files (read whole)."""
    if names_entry(spec):
        return sha256_file(resolve_entry(spec).path / MANIFEST)
    from zoo.models.hf import resolve_path

    directory = resolve_path(str(spec), key="model.init_from")
    digest = hashlib.sha256()
    for file in [directory / "config.json", *_weight_files(directory)]:
        digest.update(f"{file.name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def pinned_source(init_from: str | None, rebuilds_state: bool) -> tuple[str, str] | None:
    """``(init_from, its fingerprint)`` when a module's checkpoints leave out state rebuilt from it, else None."""
    return (str(init_from), source_fingerprint(init_from)) if rebuilds_state and init_from else None


def build_initialized(config: Any, init_from: str | None) -> torch.nn.Module:
    """The network of ``config``; with ``init_from`` (``hub:NAME`` or an entry directory), holding its weights. An
    hf model's weights come with it (``config.path``: the entry's ``hf/`` or the model directory)."""
    from zoo.models import build_model

    model = build_model(config)
    if init_from and config.arch != "hf":
        model.load_state_dict(load_weights(init_from))
    return model


def load_weights(spec: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Verified weights of ``hub:NAME`` or of a hub entry directory; or a transformers directory's, in zoo's names."""
    if names_entry(spec):
        return resolve_entry(spec).state_dict()
    from zoo.models.hf import resolve_path

    return _read_hf_directory(resolve_path(str(spec), key="model.init_from"))[1]


def check_weights(config: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights that do not fill the network of ``config``: a tensor missing, unexpected, or misshapen."""
    from zoo.models import build_model, config_from_dict

    with torch.device("meta"):
        expected = build_model(config_from_dict(config)).state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} has shape {tuple(state[k].shape)}, the config needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HubError(f"{source}: weights do not match its config: {'; '.join(problems[:3])}{more}")


def _model_state(checkpoint: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The model config and the network's weights in a zoo Lightning checkpoint; a LoRA policy's merged into the
    plain network's (its frozen base from the checkpoint, or rebuilt from ``model.init_from`` when left out)."""
    model = checkpoint.get("hyper_parameters", {}).get("model")
    if model is None:
        raise HubError(f"{path}: no model config in its hyper_parameters (not a zoo checkpoint?)")
    config = {k: v for k, v in dict(model).items() if k not in ("init_from", "lora")}
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    lora = _lora_of(model)
    if lora is not None:
        state = _merged_run_state(config, model.get("init_from"), state, lora, path, checkpoint)
    return config, state


def _adapter_of_run(model_hparams: dict[str, Any], checkpoint: dict[str, Any]):
    """A LoRA run started from a hub entry (zoo's own architectures): its adapter settings (with the base entry
    and that entry's manifest sha256) and adapters by PEFT's saved names; None for any other run (written whole,
    merged)."""
    from zoo.training.lora import saved_adapters

    lora, init_from = _lora_of(model_hparams), model_hparams.get("init_from")
    if lora is None or not init_from or model_hparams.get("arch") == "hf":
        return None
    if not names_entry(init_from):
        return None
    base = resolve_entry(init_from)
    check_rebuilt_from(checkpoint, (str(init_from), sha256_file(base.path / MANIFEST)))
    state = checkpoint["state_dict"]
    adapters = saved_adapters({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    settings = {**lora.to_dict(), "base": str(init_from), "base_manifest_sha256": sha256_file(base.path / MANIFEST)}
    return settings, adapters


def _lora_of(model_hparams: dict[str, Any]):
    from zoo.training.lora import lora_settings

    return lora_settings(model_hparams.get("lora"))


def _merged_run_state(config, init_from, state, lora, path: Path, checkpoint) -> dict[str, torch.Tensor]:
    """The plain weights of a LoRA run: its base (saved, or rebuilt from ``init_from``, refused if it is not the
    model the run was trained from) with the adapters merged."""
    from zoo.models import config_from_dict
    from zoo.training.lora import merge_adapters, saved_adapters

    adapters = saved_adapters(state)
    base = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    if not any(".base_layer." in k for k in state):  # left out of the checkpoint: the entry it started from
        if not init_from:
            raise HubError(f"{path}: a LoRA checkpoint without its base weights and without model.init_from")
        check_rebuilt_from(checkpoint, (str(init_from), source_fingerprint(init_from)))
        base = {**build_initialized(config_from_dict(config), init_from).state_dict(), **base}
    return merge_adapters(base, adapters, lora.scaling)


def _locate_checkpoint(source: Path) -> tuple[Path, Path | None]:
    if source.is_dir():
        checkpoint = source / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise HubError(f"{source}: no checkpoints/last.ckpt in this run directory")
        return checkpoint, source
    if source.is_file():
        run_dir = source.parent.parent if source.parent.name == "checkpoints" else None
        return source, run_dir
    raise HubError(f"{source}: no such run directory or checkpoint file")


def _read_hf_config(directory: Path):
    """zoo's config of the model in a transformers ``directory`` of a family zoo implements."""
    from zoo.hub.convert import config_from_hf

    try:
        hf_config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HubError(f"{directory / 'config.json'}: unreadable ({e})") from None
    try:
        return config_from_hf(hf_config)
    except (ValueError, KeyError, TypeError) as e:
        raise HubError(f"{directory / 'config.json'}: {first_line(e)}") from None


def _read_hf_directory(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """zoo's config and weights of the model in a transformers ``directory`` of a family zoo implements."""
    from zoo.hub.convert import state_dict_from_hf

    files = _weight_files(directory)  # one line when there are none
    config = _read_hf_config(directory)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                weights = load_file(file)
            else:
                weights = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or not weights at all: name the file
            raise HubError(f"{file}: not readable weights ({type(e).__name__}: {first_line(e)})") from None
        if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
            raise HubError(f"{file}: not a table of named tensors")
        state.update(weights)
    try:
        state = state_dict_from_hf(state, config)
    except ValueError as e:
        raise HubError(f"{directory}: {e}") from None
    return config.to_dict(), state


def _weight_files(directory: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index_name).is_file():
            index = json.loads((directory / index_name).read_text())
            return [directory / f for f in sorted(set(index["weight_map"].values()))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (directory / single).is_file():
            return [directory / single]
    raise HubError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _hf_model_files(directory: Path) -> list[Path]:
    """The files of a transformers model directory that make the model: config, generation config, weights (with
    their index). Tokenizer files go to the entry's ``tokenizer/``."""
    names = ("config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    return [directory / n for n in names if (directory / n).is_file()] + _weight_files(directory)


def check_hf_directory(directory: Path, source: str) -> int:
    """Load the transformers model in ``directory`` as training would, and refuse it (one line) unless every weight
    it needs is there with its shape. Returns its number of parameters."""
    from transformers import AutoModelForCausalLM

    from zoo.models.hf import causal_lm_directory, quiet_transformers

    quiet_transformers()
    _weight_files(directory)  # one line when there are none
    try:
        causal_lm_directory(str(directory))
        model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    except ZooError as e:
        raise HubError(f"{source}: {e}") from None
    except Exception as e:  # corrupt or truncated weights: name the directory
        raise HubError(f"{source}: transformers cannot load it ({type(e).__name__}: {first_line(e)})") from None
    problems = [f"missing {k}" for k in info.get("missing_keys", ())]
    problems += [f"misshapen {k[0] if isinstance(k, tuple) else k}" for k in info.get("mismatched_keys", ())]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise HubError(f"{source}: weights do not match its config: {'; '.join(problems[:3])}{more}")
    return sum(p.numel() for p in model.parameters())


def _save_hf_run(
    config: dict[str, Any], state: dict[str, torch.Tensor], checkpoint: Path, directory: Path
) -> dict[str, Any]:
    """Write an hf run's model into ``directory`` the way transformers does; returns the entry's config."""
    from zoo.models import build_model, config_from_dict

    try:
        model = build_model(config_from_dict(config))  # the architecture, from the run's model.path
    except ZooError as e:
        raise HubError(f"{checkpoint}: cannot rebuild its hf model ({e})") from None
    model.load_state_dict(state)
    model.hf.save_pretrained(directory)
    return {"arch": "hf", "model_type": model.hf.config.model_type}


def _download_hf(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "pytorch_model*.bin"]
            )
        )
    except Exception as e:  # offline, unknown repo, gated: one line that says which
        raise HubError(f"hf:{repo_id}: download failed ({type(e).__name__}: {first_line(e)})") from None


def _plain(value: Any) -> Any:
    """Make checkpoint metadata YAML-safe (tuples → lists, unknown objects → str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _training_command(run_dir: Path | None) -> str | None:
    """The ``zoo fit`` command that made a run (its Hydra overrides), when the run directory says."""
    saved = run_dir / ".hydra" / "overrides.yaml" if run_dir else None
    if saved is None or not saved.is_file():
        return None
    overrides = [o for o in yaml.safe_load(saved.read_text()) or [] if not o.startswith(("hydra.", "resume="))]
    return " ".join(["zoo", "fit", *(shlex.quote(o) for o in overrides)])


def _card_text(front: dict[str, Any]) -> str:
    metrics = front.get("metrics") or {}
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()) if isinstance(v, int | float))
    table = f"| metric | value |\n|---|---|\n{rows}\n" if rows else "No metrics were recorded.\n"
    return (
        "---\n"
        + yaml.safe_dump(_plain(front), sort_keys=False)
        + "---\n\n"
        + f"# {front['name']}\n\n"
        + f"A zoo `{front['arch']}` model with {front['parameters']:,} parameters, from `{front['source']}`.\n\n"
        + (f"Trained with `{front['command']}`.\n\n" if front.get("command") else "")
        + table
    )
