"""scripts/serve_vs_offline.py (`nanovllm bench serve-vs-offline`): the engine flags it hands the
server, and one short real run (a server subprocess on the tiny checkpoint against LLM.generate)."""

from __future__ import annotations

import argparse
import json
import re

from nanovllm.cli import build_parser
from nanovllm.config import EngineConfig
from nanovllm.scripts import serve_vs_offline as svo


def parse(*argv: str) -> argparse.Namespace:
    return svo.add_args(argparse.ArgumentParser()).parse_args(["ckpt", *argv])


def test_defaults_and_argument_checks():
    args = parse()
    assert (args.concurrency, args.reps, args.input_len, args.output_len) == ([1, 16], 5, 32, 128)
    assert svo.check_args(args) is None
    assert "--reps" in svo.check_args(parse("--reps", "0"))
    assert "--output-len" in svo.check_args(parse("--output-len", "1"))
    assert "--concurrency" in svo.check_args(parse("--concurrency", "0,4"))
    assert build_parser().parse_args(["bench", "serve-vs-offline", "gpt2"]).func is svo.run


def test_the_server_gets_the_same_engine_options():
    given = ["--load-format", "dummy", "--no-enable-prefix-caching", "--num-kv-blocks", "64",
             "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}']
    argv = svo.engine_argv(parse(*given))
    assert argv == given
    assert svo.engine_argv(parse()) == []
    again = parse(*argv)
    assert EngineConfig.from_cli_args("m", again) == EngineConfig.from_cli_args("m", parse(*given))


def test_a_short_run_prints_ratios_ttft_cpu_and_load(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "runs.json"
    argv = ["bench", "serve-vs-offline", str(tiny_ckpt), "--concurrency", "1,3", "--reps", "1",
            "--input-len", "4", "--output-len", "16", "--num-kv-blocks", "64", "--json", str(out)]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "machine:" in printed and "load average" in printed.splitlines()[-1]
    for c in (1, 3):  # a row per concurrency in each table: ratio and TTFTs, then CPU per token
        # (n/a: the tiny model is so fast that a whole answer can arrive in one read; for the
        # same reason a ratio can be far from 1 either way, 12.878 say)
        rows = re.findall(rf"^ *{c} +(\S+) +(\S+) +(\d+\.\d{{3}}|n/a) +(\S+) +(\S+)$", printed,
                          re.M)
        assert len(rows) == 1, printed
    assert "served/offline" in printed and "server's event loop" in printed
    cells = json.loads(out.read_text())["cells"]
    assert [c["concurrency"] for c in cells] == [1, 3]
    for cell in cells:
        for side in ("offline", "served"):
            (run,) = cell[side]
            assert run["tokens"] == 16 * cell["concurrency"]  # EOS ignored
            assert not run["decode_tok_s"] <= 0 and run["ttft_ms"] > 0  # (NaN: one read)
        assert cell["served"][0]["loop_cpu_us_per_token"] is not None
