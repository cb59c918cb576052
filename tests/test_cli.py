"""The `nanovllm` command: user errors are one line on stderr and exit 2, never a traceback;
--allow-dummy-fallback on every command; `bench offline` and `bench serve` are plain subcommands."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields

import pytest

from nanovllm import EngineConfig
from nanovllm.cli import build_parser, main


@pytest.mark.parametrize("args, message", [
    (["--block-size", "0"], "block_size must be a positive integer, got 0"),
    (["--max-model-len", "5000"], "max_model_len=5000 exceeds the model's n_positions=256"),
    (["--dtype", "bfloat16", "--quantization", "int8"],
     "quantization='int8' stores the weights in int8, so dtype='bfloat16' cannot apply too "
     "(leave dtype 'auto')"),
])
def test_bad_engine_flags_are_one_line(tiny_ckpt, capsys, args, message):
    assert main(["generate", str(tiny_ckpt), "hello", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nanovllm generate: error: {message}"


def test_missing_local_model_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "no/such-dir", "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nor is there a local directory 'no/such-dir'" in err


def test_generate_prints_completions(tiny_ckpt, capsys):
    assert main(["generate", str(tiny_ckpt), "hello", "--max-tokens", "3",
                 "--num-kv-blocks", "64"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("'hello' -> ") and "[length]" in out.out
    assert "RANDOM WEIGHTS" in out.err


@pytest.mark.parametrize("flags, options", [
    ([], ("auto", None)), (["--quantization", "int8"], ("auto", "int8")),
    (["--dtype", "bfloat16"], ("bfloat16", None)),
])
def test_precision_flags_reach_the_engine_config(flags, options):
    for argv in (["serve", "gpt2", *flags], ["generate", "gpt2", "hi", *flags],
                 ["bench", "offline", *flags]):
        config = EngineConfig.from_cli_args("gpt2", build_parser().parse_args(argv))
        assert (config.dtype, config.quantization) == options
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "gpt2", "--dtype", "float16"])  # not a choice


def test_generate_with_int8_weights(tiny_ckpt, capsys):
    assert main(["generate", str(tiny_ckpt), "hello", "--max-tokens", "3", "--num-kv-blocks", "64",
                 "--quantization", "int8"]) == 0
    assert capsys.readouterr().out.startswith("'hello' -> ")


# --------------------------------------------------------------------------- --allow-dummy-fallback


@pytest.mark.parametrize("argv, default", [
    (["serve", "gpt2"], False), (["generate", "gpt2", "hello"], False),
    (["bench", "offline"], True),  # a benchmark runs on random weights as fast: it falls back by default
], ids=["serve", "generate", "bench"])
def test_every_command_takes_the_fallback_flag(argv, default):
    def config(*flags: str) -> EngineConfig:
        args = build_parser().parse_args([*argv, *flags])
        return EngineConfig.from_cli_args(args.model, args)

    assert config().allow_dummy_fallback is default
    assert config("--allow-dummy-fallback").allow_dummy_fallback is True
    assert config("--no-allow-dummy-fallback").allow_dummy_fallback is False


def test_generate_offline_falls_back_to_random_weights_with_the_flag(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NANOVLLM_MODELS_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "nanovllm.cli", "generate", "gpt2", "--allow-dummy-fallback",
         "Hello", "--max-tokens", "2", "--num-kv-blocks", "16"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("'Hello' -> ")
    notes = [line for line in result.stderr.splitlines() if "unreachable" in line]
    assert notes == ["WARNING nanovllm: the Hugging Face hub is unreachable, so loading a dummy "
                     "gpt2 checkpoint with RANDOM weights (cannot download gpt2: HF_HUB_OFFLINE=1 "
                     "is set)"]
    assert "RANDOM weights (dummy checkpoint), 124.4M parameters" in result.stderr


def test_generate_offline_without_the_flag_says_how_to_get_random_weights(capsys, monkeypatch,
                                                                          tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NANOVLLM_MODELS_DIR", str(tmp_path))
    assert main(["generate", "gpt2", "hello"]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("nanovllm generate: error: cannot download gpt2: HF_HUB_OFFLINE=1 is set")
    assert "nanovllm serve gpt2 --load-format dummy" in err and "--allow-dummy-fallback" in err


# --------------------------------------------------------------------------- bench offline | serve


@pytest.mark.parametrize("before", [
    ["--input-len", "8"],    # an option of both benchmarks, before either is named
    ["--reps", "2"],         # the offline bench's only
    ["--port", "8311"],      # serve's only
    ["--json", "out.json"],
])
def test_options_before_the_bench_kind_are_refused(capsys, before):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", *before, "serve", "--num-prompts", "4"])
    assert exit_.value.code == 2
    assert "nanovllm bench: error:" in capsys.readouterr().err


def test_bench_needs_its_kind(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench"])
    assert exit_.value.code == 2
    assert "offline" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["bench", "offline", "--model", "serve"],
                                  ["bench", "offline", "--json", "serve"]])
def test_serve_as_an_option_value_is_only_a_value(argv):
    """A checkpoint directory or JSON file may be called `serve`: the offline bench runs."""
    args = build_parser().parse_args(argv)
    assert args.bench_command == "offline"
    assert "serve" in (args.model, args.json)


def test_options_in_their_place_are_honoured():
    args = build_parser().parse_args(["bench", "serve", "--input-len", "8", "--port", "8311"])
    assert (args.bench_command, args.input_len, args.port) == ("serve", 8, 8311)
    args = build_parser().parse_args(["bench", "serve", "--model", "serve"])
    assert (args.bench_command, args.model) == ("serve", "serve")
    args = build_parser().parse_args(["bench", "offline", "--input-len", "8", "--reps", "2"])
    assert (args.bench_command, args.input_len, args.reps) == ("offline", [8], 2)


def test_the_command_line_has_no_parser_of_its_own():
    """Plain argparse subcommands: nothing re-parses argv behind argparse's back."""
    import argparse

    assert type(build_parser()) is argparse.ArgumentParser


# --------------------------------------------------------------------------- engine options


def test_engine_flags_have_the_config_defaults():
    """The flags are generated from EngineConfig: no default is written twice."""
    args = build_parser().parse_args(["serve", "m"])
    assert EngineConfig.from_cli_args("m", args) == EngineConfig("m")
    args = build_parser().parse_args(["serve", "m", "--no-enable-prefix-caching",
                                      "--kv-cache-dtype", "float16", "--max-model-len", "64"])
    config = EngineConfig.from_cli_args("m", args)
    assert (config.enable_prefix_caching, config.kv_cache_dtype, config.max_model_len) == (
        False, "float16", 64)


def test_every_engine_option_is_a_documented_flag(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside hyphenated flag names
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in fields(EngineConfig):
        if f.name != "model":
            assert f"--{f.name.replace('_', '-')}" in help_text
            assert " ".join(f.metadata["help"].split()) in help_text
    assert "--load-format {auto,safetensors,dummy}" in help_text
    assert "tokens per KV block (default: 16)" in help_text


def test_a_choice_outside_the_list_is_refused_by_the_config_too():
    with pytest.raises(ValueError, match="load_format must be one of 'auto', 'safetensors', "
                                         "'dummy', got 'pickle'"):
        EngineConfig("m", load_format="pickle")


def test_python_m_nanovllm_server_is_nanovllm_serve(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NANOVLLM_MODELS_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "nanovllm.server", "no/such-dir"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "nanovllm serve: error: cannot download no/such-dir: HF_HUB_OFFLINE=1 is set")
