"""scripts/bench_models.py (`nanovllm bench models`): one short real run, a server subprocess
on two tiny checkpoints in a --models-dir."""

from __future__ import annotations

import re
import shutil

from nanovllm.cli import build_parser
from nanovllm.scripts import bench_models


def test_a_short_run_prints_load_memory_and_ratios(tiny_ckpt, tmp_path, capsys):
    for name in ("a", "b"):
        shutil.copytree(tiny_ckpt, tmp_path / name)
    args = build_parser().parse_args([
        "bench", "models", "--models-dir", str(tmp_path), "--clients", "2", "--num-prompts", "2",
        "--input-len", "4", "--output-len", "4", "--repeats", "1",
        "--serve-args", "--num-kv-blocks 64"])
    assert args.func is bench_models.run
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"load of a on demand: first [\d.]+ s, again [\d.]+ s", out), out
    assert re.search(r"before \d+ MiB, loaded \d+ MiB, after unload \d+ MiB", out), out
    for name in ("a", "b"):
        assert re.search(rf"  {name}: alone [\d.]+ tok/s, beside the other [\d.]+ tok/s, "
                         r"ratio [\d.]+", out), out
