"""Where served models come from (server/models/catalog.py): durations as Ollama writes them,
a --models-dir's checkpoints, a --models-config file's entries and their engine options."""

from __future__ import annotations

import argparse
import math

import pytest

from nanovllm.server.models.catalog import (
    engine_config,
    entries_from_args,
    parse_duration,
    read_config,
    scan_dir,
)


@pytest.mark.parametrize("value, seconds", [
    ("5m", 300), ("30s", 30), ("1h30m", 5400), ("500ms", 0.5), ("0", 0), (0, 0), (12, 12),
    (2.5, 2.5), ("45", 45), ("-1", math.inf), (-1, math.inf), ("-5m", math.inf)])
def test_durations_as_ollama_writes_them(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 m", "m", "", "5x", True, None, [1], "nan"])
def test_what_is_not_a_duration_is_refused(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_a_models_dir_holds_checkpoint_dirs_and_gguf_files(tmp_path):
    (tmp_path / "chat").mkdir()
    (tmp_path / "chat" / "config.json").write_text("{}")
    (tmp_path / "quant").mkdir()
    (tmp_path / "quant" / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    (tmp_path / "coder.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes").mkdir()  # no checkpoint in it
    (tmp_path / "README.md").write_text("")
    assert [(e.name, e.size) for e in scan_dir(tmp_path)] == [("chat", 2), ("coder", 4),
                                                              ("quant", 4)]


def test_a_models_config_names_paths_and_options(tmp_path):
    (tmp_path / "bge").mkdir()
    path = tmp_path / "models.yaml"
    path.write_text("models:\n"
                    "  - {name: notes, path: bge, options: {runner: pooling, max-model-len: 64,"
                    " enforce-eager: true}}\n"
                    "  - {name: hub, path: gpt2}\n")
    notes, hub = read_config(path)
    assert (notes.name, notes.path) == ("notes", str(tmp_path / "bge"))
    assert notes.options == ["--runner", "pooling", "--max-model-len", "64", "--enforce-eager"]
    assert (hub.name, hub.path, hub.options) == ("hub", "gpt2", [])


@pytest.mark.parametrize("text, why", [
    ("models: 3", "expected a list"), ("- {name: x}", "needs `path`"),
    ("- {path: x, dtype: float16}", "unknown key 'dtype'"),
    ("- {path: x, options: [1]}", "expected a mapping"), ("[", "models.yaml")])
def test_a_bad_models_config_says_where(tmp_path, text, why):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=why):
        read_config(path)


def serve_args(*argv: str) -> argparse.Namespace:
    from nanovllm.server.cli import add_serve_args

    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    return parser.parse_args(argv)


def test_per_model_options_override_the_servers(tmp_path):
    (tmp_path / "m.yaml").write_text("- {name: small, path: gpt2, options: {max-model-len: 64}}\n"
                                     "- {name: bad, path: gpt2, options: {max-model-len: x}}\n")
    args = serve_args("gpt2", "--model", "distilgpt2", "--models-config",
                      str(tmp_path / "m.yaml"), "--dtype", "float32", "--max-model-len", "512")
    first, second, small, bad = entries_from_args(args)
    assert [first.name, second.name] == ["gpt2", "distilgpt2"]
    assert engine_config(first, args).max_model_len == 512
    config = engine_config(small, args)
    assert (config.max_model_len, config.dtype) == (64, "float32")
    with pytest.raises(ValueError, match="the options of model 'bad'"):
        engine_config(bad, args)


def test_model_names_are_unique_and_one_is_needed():
    with pytest.raises(ValueError, match="two models are named 'gpt2'"):
        entries_from_args(serve_args("gpt2", "--model", "gpt2"))
    with pytest.raises(ValueError, match="no model to serve"):
        entries_from_args(serve_args())

