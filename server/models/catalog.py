"""Where the served models come from: the command line's MODEL and repeated --model, the
checkpoints in a --models-dir, and the entries of a --models-config YAML file. Each becomes a
ModelEntry: the name clients use, the checkpoint, and its own engine flags.

A --models-config file is a list of models (or {"models": [...]}), each with `name`, `path`
(relative paths are the file's directory's) and optional `options`, engine flags without their
dashes (`dtype: float32`, `max-model-len: 512`, `runner: pooling`; true for a switch):

    models:
      - name: chat
        path: ./gpt2
      - name: notes-embedder
        path: ./bge-small
        options: {runner: pooling, max-model-len: 512}
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

FOREVER = math.inf  # keep_alive -1 (or any negative duration): never unloaded for idleness
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(slots=True)
class ModelEntry:
    name: str  # what clients send as "model"
    path: str  # checkpoint directory, .gguf file or hub name
    options: list[str] = field(default_factory=list)  # engine flags of its own (--dtype ...)

    @property
    def size(self) -> int:
        return checkpoint_size(self.path)


def checkpoint_size(where: str) -> int:
    """A checkpoint's bytes on disk (0 for a hub name or an unreadable path)."""
    path = Path(where)
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def served_name(model: str) -> str:
    """What clients call the model: a hub name as given (gpt2, org/name), a local checkpoint by
    its directory's name, so that no response or metric shows the server's file system."""
    path = Path(model)
    return path.resolve().name if path.exists() else model


def parse_duration(value) -> float:
    """Ollama's keep_alive: seconds as a number, or a Go duration ("5m", "30s", "1h30m");
    negative is forever, 0 is at once. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("-")
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"not a duration: {value!r} (e.g. 5m, 30s, 1h, 0, -1)") from None
            seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError(f"not a duration: {value!r}")
    if math.isnan(seconds):
        raise ValueError(f"not a duration: {value!r}")
    return FOREVER if seconds < 0 else seconds


def entries_from_args(args: argparse.Namespace) -> list[ModelEntry]:
    """Every model the command line names, in order: MODEL, each --model, the --models-dir's
    checkpoints (sorted), the --models-config's entries. Names must be unique."""
    entries = []
    for path in ([args.model] if args.model else []) + list(args.models or []):
        name = args.served_model_name if args.served_model_name and not entries else None
        entries.append(ModelEntry(name or served_name(path), path))
    if args.models_dir:
        entries += scan_dir(Path(args.models_dir))
    if args.models_config:
        entries += read_config(Path(args.models_config))
    if not entries:
        raise ValueError("no model to serve: give MODEL, --model, --models-dir or --models-config")
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"two models are named {entry.name!r}: names must be unique")
        seen.add(entry.name)
    return entries


def scan_dir(root: Path) -> list[ModelEntry]:
    """Each checkpoint directory (one with a config.json or a .gguf file) and each .gguf file
    in `root`, named by its folder or the file's stem."""
    if not root.is_dir():
        raise ValueError(f"--models-dir {root}: not a directory")
    entries = []
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix == ".gguf":
            entries.append(ModelEntry(path.stem, str(path)))
        elif path.is_dir() and ((path / "config.json").exists() or any(path.glob("*.gguf"))):
            entries.append(ModelEntry(path.name, str(path)))
    return entries


def read_config(path: Path) -> list[ModelEntry]:
    """The entries of a --models-config YAML file (see the module's docstring)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--models-config {path}: {exc}") from exc
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"--models-config {path}: expected a list of models (or models: [...])")
    return [config_entry(item, i, path.parent) for i, item in enumerate(items)]


def config_entry(item, i: int, base: Path) -> ModelEntry:
    where = f"--models-config models[{i}]"
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        raise ValueError(f"{where}: needs `path` (and `name`)")
    unknown = sorted(set(item) - {"name", "path", "options"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (name, path, options)")
    path = item["path"]
    local = base / path
    if not Path(path).is_absolute() and (path.startswith(".") or local.exists()):
        path = str(local)
    name = item.get("name") or Path(path).stem
    options = item.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{where}.options: expected a mapping of engine flags")
    return ModelEntry(str(name), path, option_flags(options))


def option_flags(options: dict) -> list[str]:
    """{"max-model-len": 512, "enforce-eager": true} -> ["--max-model-len", "512", ...]."""
    flags = []
    for key, value in options.items():
        flag = "--" + str(key).lstrip("-").replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


class _OptionsParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(message)


def engine_config(entry: ModelEntry, args: argparse.Namespace):
    """The EngineConfig of `entry`: the server's engine flags, with the entry's own on top."""
    from nanovllm.config import EngineConfig, add_engine_args

    if not entry.options:
        return EngineConfig.from_cli_args(entry.path, args)
    parser = _OptionsParser(prog=entry.name, add_help=False)
    add_engine_args(parser)
    parser.set_defaults(**vars(args))
    try:
        own = parser.parse_args(entry.options)
    except ValueError as exc:
        raise ValueError(f"the options of model {entry.name!r}: {exc}") from None
    return EngineConfig.from_cli_args(entry.path, own)
