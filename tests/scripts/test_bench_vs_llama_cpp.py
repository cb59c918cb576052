"""`nanovllm bench offline --compare llama.cpp` (scripts/bench_vs_llama_cpp.py, scripts/llama_cpp.py):
the table and the roofs from known figures, llama.cpp's outputs parsed, a clear error when its
tools are missing, and, where a built llama.cpp is given (LLAMA_CPP_DIR, or its tools on PATH),
the whole command on a tiny random GPT-2 converted and quantized by llama.cpp itself."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import pytest

from nanovllm.scripts import bench_vs_llama_cpp, benchmark, llama_cpp
from nanovllm.scripts.bench_vs_llama_cpp import Cost, Workload, format_table, roof_share
from nanovllm.scripts.roofs import Roofs

ROOFS = Roofs(bandwidth=40e9, float32_peak=100e9, int8_peak=400e9, int8_kernel="vnni",
              bf16_peak=100e9, bf16_kernel="widen", block_peak=800e9, block_kernel="amx")
COST = Cost(weight_bytes=400_000_000, multiply_adds=600_000_000, head_multiply_adds=100_000_000)


def test_roof_share_is_bytes_at_batch_1_and_multiply_adds_beyond():
    decode = Workload("Q4_0", "decode 1", 1)
    assert roof_share(decode, 50.0, COST, ROOFS) == pytest.approx(400e6 * 50 / 40e9)
    batched = Workload("Q4_0", "decode 16", 16)
    assert roof_share(batched, 200.0, COST, ROOFS) == pytest.approx(600e6 * 200 / 400e9)
    prefill = Workload("Q4_0", "prefill 512", 1)  # the LM head runs for one token only
    assert roof_share(prefill, 300.0, COST, ROOFS) == pytest.approx(500e6 * 300 / 400e9)
    # a block-quantized file's products run on the block kernels: their peak is the roof
    blocks = replace(COST, block_quantized=True)
    assert roof_share(batched, 200.0, blocks, ROOFS) == pytest.approx(600e6 * 200 / 800e9)
    assert roof_share(decode, 50.0, blocks, ROOFS) == pytest.approx(400e6 * 50 / 40e9)


def test_table_shows_medians_ratios_and_roofs():
    rows = [Workload("Q4_0", "decode 1", 1, ours=[60.0, 70.0, 80.0], theirs=[50.0, 40.0, 60.0]),
            Workload("Q4_0", "decode 64", 64, ours=[500.0], theirs=[]),
            Workload("Q8_0", "prefill 512", 1, ours=[300.0, 330.0], theirs=[100.0, 120.0])]
    assert rows[0].ratio == pytest.approx(70 / 50) and rows[1].ratio is None
    text = format_table(rows, {"Q4_0": COST, "Q8_0": COST}, ROOFS, "title")
    lines = text.splitlines()
    assert lines[0] == "title" and "llama.cpp tok/s" in lines[1] and set(lines[2]) <= {"-", " "}
    assert lines[3].split() == ["Q4_0", "decode", "1", "50.0", "[40.0-60.0]", "70.0",
                                "[60.0-80.0]", "1.40x", "50%", "70%"]
    assert lines[4].split() == ["Q4_0", "decode", "64", "-", "500.0", "-", "-", "75%"]
    assert lines[5].split()[-3:] == ["2.86x", "14%", "39%"]


LLAMA_BENCH_JSONL = """\
{"build_commit": "0c1e570", "model_type": "qwen3 0.6B Q4_0", "n_threads": 2, "n_prompt": 512, "n_gen": 0, "avg_ns": 2400000000, "avg_ts": 213.4, "stddev_ts": 0.0, "samples_ts": [ 213.4 ]}
{"build_commit": "0c1e570", "model_type": "qwen3 0.6B Q4_0", "n_threads": 2, "n_prompt": 0, "n_gen": 128, "avg_ns": 2200000000, "avg_ts": 58.1, "stddev_ts": 0.0, "samples_ts": [ 58.1 ]}
"""
BATCHED_JSONL = """\
main: n_kv_max = 10240, n_batch = 2048, n_ubatch = 512
{"n_kv_max": 10240, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 32, "tg": 128, "pl": 16, "n_kv": 2560, "t_pp": 2.1, "speed_pp": 243.8, "t_tg": 14.2, "speed_tg": 144.2, "t": 16.3, "speed": 157.0}
{"n_kv_max": 10240, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, "n_threads": 2, "n_threads_batch": 2, "pp": 32, "tg": 128, "pl": 64, "n_kv": 10240, "t_pp": 8.9, "speed_pp": 230.1, "t_tg": 40.0, "speed_tg": 204.8, "t": 48.9, "speed": 209.4}

llama_perf_context_print: total time = 65000.00 ms
"""


def test_llama_cpp_outputs_parse():
    assert llama_cpp.parse_llama_bench(LLAMA_BENCH_JSONL) == llama_cpp.LlamaBenchRun(213.4, 58.1)
    assert llama_cpp.parse_batched_bench(BATCHED_JSONL) == {16: 144.2, 64: 204.8}
    assert llama_cpp.parse_batched_bench("no table") == {}


def test_the_kv_pool_holds_the_largest_batch_whole():
    args = argparse.Namespace(num_kv_blocks=None, block_size=16, input_len=[32], output_len=[128],
                              prefill_len=[512], batch_sizes=[1, 16, 64])
    assert bench_vs_llama_cpp.kv_blocks_for(args) == 64 * (10 + 1)  # 160 tokens: 10 blocks each
    assert bench_vs_llama_cpp.kv_blocks_for(argparse.Namespace(**{**vars(args),
                                                                  "batch_sizes": [1]})) == 34
    assert bench_vs_llama_cpp.kv_blocks_for(argparse.Namespace(**{**vars(args),
                                                                  "num_kv_blocks": 7})) == 7


def test_missing_tools_are_named_with_exit_2(tmp_path, capsys):
    with pytest.raises(llama_cpp.MissingTool, match="llama-bench not found under"):
        llama_cpp.find_tools(str(tmp_path))
    with pytest.raises(llama_cpp.MissingTool, match="does not exist"):
        llama_cpp.find_tools(str(tmp_path / "nowhere"))
    code = benchmark.main(["--compare", "llama.cpp", "--llama-cpp-dir", str(tmp_path),
                           "--model", "gpt2", "--reps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: llama-bench not found") and "\n" not in err


def test_one_length_each(tmp_path, capsys):
    code = benchmark.main(["--compare", "llama.cpp", "--llama-cpp-dir", str(tmp_path),
                           "--input-len", "8,16"])
    assert code == 2 and "one value of --input-len" in capsys.readouterr().err


def _tools():
    try:
        tools = llama_cpp.find_tools()
    except llama_cpp.MissingTool:
        return None
    return tools if tools.converter and tools.quantize else None


@pytest.mark.skipif(_tools() is None, reason="no llama.cpp build: set LLAMA_CPP_DIR to one with "
                    "llama-bench, llama-quantize and convert_hf_to_gguf.py")
def test_small_comparison_on_files_llama_cpp_made(tmp_path, capsys):
    from nanovllm.model.checkpoint.dummy import write_dummy_checkpoint

    model = write_dummy_checkpoint(tmp_path / "tiny-gpt2", "gpt2", n_layer=2, n_embd=64,
                                   n_head=4, vocab_size=1024, n_positions=256)
    out = tmp_path / "out.json"
    code = benchmark.main(["--compare", "llama.cpp", "--model", str(model), "--gguf-types",
                           "Q8_0,Q4_0", "--gguf-dir", str(tmp_path / "gguf"), "--batch-sizes",
                           "1,2", "--input-len", "8", "--output-len", "4", "--prefill-len", "16",
                           "--reps", "1", "--threads", "1", "--num-kv-blocks", "64",
                           "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "ratio = nanovllm / llama.cpp" in printed
    result = json.loads(out.read_text())
    assert sorted(result["files"]) == ["Q4_0", "Q8_0"]
    # Our engine ran each file's blocks as stored, Q8_0's 34 bytes a 32 weights (Q4_0 keeps
    # the tied token table in 8 bits), not float32 weights of the checkpoint.
    weights = 2 * (64 * 3 * 64 + 64 * 64 + 2 * 64 * 256) + 1024 * 64
    costs = {kind: c["weight_bytes"] for kind, c in result["costs"].items()}
    assert costs["Q4_0"] < costs["Q8_0"] == weights * 34 // 32
    assert all(c["block_quantized"] for c in result["costs"].values())  # their roof: block_peak
    by_name = {(w["gguf_type"], w["name"]): w for w in result["workloads"]}
    for kind in ("Q4_0", "Q8_0"):
        for name in ("decode 1", "prefill 16", "decode 2"):
            assert len(by_name[kind, name]["ours"]) == 1
        assert len(by_name[kind, "decode 1"]["theirs"]) == 1
        assert len(by_name[kind, "prefill 16"]["theirs"]) == 1
