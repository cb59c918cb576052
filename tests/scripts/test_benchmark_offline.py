"""scripts/benchmark.py (`nanovllm bench`): arguments, the grid, and short real runs on the tiny
dummy checkpoint, against transformers too; offline, the default gpt2 falls back to random weights."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanovllm.cli import build_parser, run_offline
from nanovllm.model.layers.linear import host_bf16_kernel, host_block_kernel
from nanovllm.scripts import benchmark, benchmark_serving
from nanovllm.scripts.benchmark import Cell, CellResult, Run

SMALL = ["--batch-sizes", "1,2", "--input-len", "8", "--output-len", "4", "--prefill-len", "32",
         "--reps", "2", "--num-kv-blocks", "64"]
REPO = Path(__file__).resolve().parents[2]
CODE_PROMPTS = REPO / "examples" / "code_prompts.jsonl"
# ../shared/models beside the checkout (a worktree of it sits one level deeper).
MODELS = next((p / "shared" / "models" for p in REPO.parents[:3]
               if (p / "shared" / "models").is_dir()), Path("/nonexistent"))


def parse(*argv: str) -> argparse.Namespace:
    return benchmark.add_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_defaults_follow_the_performance_issue():
    args = parse()
    assert (args.model, args.load_format, args.allow_dummy_fallback, args.reps, args.compare,
            args.json) == ("gpt2", "auto", True, 3, None, None)
    assert benchmark.grid(args) == [Cell(1, 32, 128), Cell(8, 32, 128), Cell(32, 32, 128),
                                    Cell(64, 32, 128), Cell(1, 512, 1)]


def test_grid_arguments():
    args = parse("--batch-sizes", "2,4", "--input-len", "16,32", "--output-len", "8",
                 "--prefill-len", "")
    assert benchmark.grid(args) == [Cell(2, 16, 8), Cell(4, 16, 8), Cell(2, 32, 8), Cell(4, 32, 8)]
    assert parse("--json").json == "-" and parse("--json", "x.json").json == "x.json"
    for bad in (["--batch-sizes", "one"], ["--batch-sizes", "-1"], ["--compare", "vllm"]):
        with pytest.raises(SystemExit):
            parse(*bad)
    assert "--reps" in benchmark.check_args(parse("--reps", "0"), benchmark.grid(parse()))
    empty = parse("--batch-sizes", "", "--prefill-len", "")
    assert "nothing to run" in benchmark.check_args(empty, benchmark.grid(empty))


def test_nanovllm_cli_delegates_bench_and_bench_serve():
    args = build_parser().parse_args(["bench", "offline", "--batch-sizes", "4", "--reps", "1"])
    # (run_offline: benchmark.run, or with --lora-modules bench_lora.run_lora)
    assert args.func is run_offline and args.batch_sizes == [4]
    args = build_parser().parse_args(["bench", "serve", "--max-concurrency", "4"])
    assert args.func is benchmark_serving.run and args.max_concurrency == 4


def test_script_runs_standalone():
    result = subprocess.run([sys.executable, benchmark.__file__, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--compare" in result.stdout and "t_first" in result.stdout


def test_ratios_and_summaries():
    r = CellResult(Cell(2, 8, 4), ours=[Run(0.1, 1.0, 16, 6), Run(0.2, 2.0, 16, 6)],
                   theirs=[Run(0.4, 3.0, 16, 6)])
    assert r.summary("nanovllm", "prefill_tps").median == pytest.approx(120.0)
    assert r.ratio("prefill_tps") == pytest.approx(120.0 / 40.0)
    assert r.ratio("decode_tps") == pytest.approx(4.5 / 2.0)
    prefill_only = CellResult(Cell(1, 32, 1), ours=[Run(0.1, None, 32, 0)])
    assert prefill_only.summary("nanovllm", "decode_tps") is None


def test_compare_transformers_without_torch_says_so_before_loading(tiny_ckpt):
    """The base install has no torch: one line with the CPU build's install command, at once."""
    code = ("import sys; sys.modules['torch'] = None\n"  # import torch now fails
            "from nanovllm.cli import main\n"
            f"sys.exit(main(['bench', 'offline', '--model', {str(tiny_ckpt)!r},"
            " '--compare', 'transformers']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    [err] = result.stderr.strip().splitlines()  # nothing loaded before it
    assert err.startswith("error: --compare transformers needs torch and transformers "
                          "(not installed: torch)")
    assert "--index-url https://download.pytorch.org/whl/cpu" in err


def decode_multiply_adds(cfg: dict) -> int:
    """Multiply-adds per decoded token from a config.json: GPT-2's four matrices per block and
    tied head, or the Llama family's fused q/k/v, o, fused gate/up and down, and its head."""
    if cfg["model_type"] == "gpt2":
        e = cfg["n_embd"]
        return cfg["vocab_size"] * e + cfg["n_layer"] * 12 * e * e
    e, i = cfg["hidden_size"], cfg["intermediate_size"]
    d = cfg.get("head_dim") or e // cfg["num_attention_heads"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    layer = (heads + 2 * kv) * d * e + e * heads * d + 3 * i * e
    return cfg["vocab_size"] * e + cfg["num_hidden_layers"] * layer


@pytest.fixture(params=["gpt2", "llama-gqa", "qwen3"])
def family_ckpt(request, tiny_ckpt, llama_ckpt, tmp_path_factory):
    """A tiny checkpoint of each architecture family; the Qwen one's tokenizer is shorter than
    its config's vocab_size, as Qwen2.5's and Qwen3's are (151,669 ids, 151,936 rows)."""
    if request.param == "gpt2":
        return tiny_ckpt
    if request.param != "qwen3":
        return llama_ckpt(request.param)
    from nanovllm.model.checkpoint.dummy import cache_root
    from nanovllm.model.checkpoint.tokenizer_files import write_llama_tokenizer

    out = tmp_path_factory.mktemp("qwen3-short-tokenizer")
    shutil.copytree(llama_ckpt("qwen3"), out, dirs_exist_ok=True)
    write_llama_tokenizer(out, 640, 256, cache_root() / "tokenizers")  # of the config's 1,024
    return out


def test_real_run_with_transformers_and_json(family_ckpt, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--model", str(family_ckpt), *SMALL, "--compare", "transformers", "--json", str(out)]
    assert benchmark.main(argv) == 0
    table = capsys.readouterr().out
    assert "prefill transformers" in table and "2 x 8 -> 4" in table and "1 x 32 -> 1" in table
    data = json.loads(out.read_text())
    assert data["model"]["n_layer"] == 2
    if data["model"]["dummy"]:  # written by nanovllm (GPT-2); the others by transformers
        assert "random weights), greedy, tokens/s" in table
    assert "target" not in table and "goal" not in table  # figures for users, not the lab's goals
    env = data["environment"]
    assert env["threads"] == env["torch_threads"] and env["numpy"] and "transformers" in env
    cells = [(c["batch_size"], c["input_len"], c["output_len"]) for c in data["results"]]
    assert cells == [(1, 8, 4), (2, 8, 4), (1, 32, 1)]
    for cell in data["results"]:
        for side in ("nanovllm", "transformers"):
            assert len(cell[side]["runs"]) == 2
            assert cell[side]["prefill_tps"]["median"] > 0
        assert cell["ratio"]["prefill_tps"] > 0
    decode = data["results"][1]
    assert decode["nanovllm"]["runs"][0]["decode_tokens"] == 2 * 3  # the first token is prefill's
    assert decode["ratio"]["decode_tps"] > 0
    assert data["results"][2]["nanovllm"]["decode_tps"] is None  # a prefill-only cell


def test_temperature_defaults_to_greedy_and_is_checked():
    assert parse().temperature == 0.0 and parse("--temperature", "0.7").temperature == 0.7
    for bad in ("-1", "nan"):
        args = parse("--temperature", bad)
        assert "--temperature" in benchmark.check_args(args, benchmark.grid(args))
    help_text = benchmark.add_args(argparse.ArgumentParser()).format_help()
    assert "default 0: greedy" in " ".join(help_text.split())


def test_run_ours_samples_at_the_temperature_it_is_given(tiny_ckpt):
    """Greedy twice is the same text; sampling at 1 on random weights (a nearly flat
    distribution over 1,024 tokens) parts from it."""
    engine = benchmark.make_engine(parse("--model", str(tiny_ckpt), "--num-kv-blocks", "64"))
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    greedy, again, sampled = [], [], []
    benchmark.run_ours(engine, prompts, 16, greedy)
    benchmark.run_ours(engine, prompts, 16, again, temperature=0.0)
    benchmark.run_ours(engine, prompts, 16, sampled, temperature=1.0)
    assert greedy == again and sampled != greedy
    assert [len(t) for t in sampled] == [16, 16]


def test_real_run_sampled_against_transformers_sampling(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_ckpt), "--batch-sizes", "2", "--input-len", "8", "--output-len",
            "4", "--prefill-len", "", "--reps", "1", "--num-kv-blocks", "64", "--compare",
            "transformers", "--temperature", "1", "--json", str(out)]
    assert benchmark.main(argv) == 0
    assert "sampled at temperature 1," in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["settings"]["temperature"] == 1.0
    [cell] = data["results"]
    assert cell["transformers"]["decode_tps"]["median"] > 0 and cell["ratio"]["decode_tps"] > 0


def test_real_run_comparing_precisions(family_ckpt, tmp_path, capsys):
    """float32, int8 and bfloat16 engines in one process, each rep on the same prompts, on each
    architecture family; the roofs count each family's own matrices."""
    out = tmp_path / "bench.json"
    argv = ["--model", str(family_ckpt), *SMALL, "--compare", "precisions", "--json", str(out)]
    assert benchmark.main(argv) == 0
    table = capsys.readouterr().out
    assert "kernels: " in table and "decode int8" in table and "prefill bfloat16" in table
    data = json.loads(out.read_text())
    assert data["environment"]["kernels"].startswith("kernels: ")
    for cell in data["results"]:
        for side in ("nanovllm", "int8", "bfloat16"):
            assert len(cell[side]["runs"]) == 2 and cell[side]["prefill_tps"]["median"] > 0
        assert cell["int8"]["vs_float32"]["prefill_tps"] > 0
    assert data["settings"]["engine"]["quantization"] is None  # the float32 engine's options
    assert "roofs (measured): memory " in table and "weights GB/s" in table
    assert set(data["roofs"]) == {"bandwidth", "float32_peak", "int8_peak", "int8_kernel",
                                  "bf16_peak", "bf16_kernel", "block_peak", "block_kernel"}
    assert all(data["roofs"][k] > 0 for k in ("bandwidth", "float32_peak", "int8_peak",
                                              "bf16_peak", "block_peak"))
    assert data["roofs"]["block_kernel"] == host_block_kernel()
    assert data["roofs"]["bf16_kernel"] == host_bf16_kernel()
    roofs = data["roof_cells"]
    assert len(roofs) == 3 * len(data["results"])  # every cell, every precision
    for side in ("int8", "bfloat16"):
        row = next(r for r in roofs if r["precision"] == side)
        peak = data["roofs"]["int8_peak" if side == "int8" else "bf16_peak"]
        assert row["of_bandwidth"] == row["weights_bytes_per_s"] / data["roofs"]["bandwidth"]
        assert row["of_peak"] == row["multiply_adds_per_s"] / peak
    macs = decode_multiply_adds(json.loads((family_ckpt / "config.json").read_text()))
    for cell in data["results"]:
        if cell["output_len"] > 1:
            row = next(r for r in roofs if r["precision"] == "float32"
                       and r["cell"] == f"{cell['batch_size']} x {cell['input_len']} -> "
                                        f"{cell['output_len']}")
            tps = cell["nanovllm"]["decode_tps"]["median"]
            assert row["multiply_adds_per_s"] == pytest.approx(macs * tps)


def test_json_to_stdout_keeps_stdout_machine_readable(tiny_ckpt, capsys):
    argv = ["--model", str(tiny_ckpt), "--batch-sizes", "2", "--input-len", "4", "--output-len",
            "3", "--prefill-len", "", "--reps", "1", "--num-kv-blocks", "16", "--json"]
    assert benchmark.main(argv) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["results"][0]["nanovllm"]["decode_tps"]["median"] > 0
    assert "transformers" not in data["results"][0]
    assert "decode nanovllm" in captured.err


def test_a_cell_longer_than_the_context_is_refused(tiny_ckpt, capsys):
    argv = ["--model", str(tiny_ckpt), "--batch-sizes", "", "--prefill-len", "300",
            "--num-kv-blocks", "64"]
    assert benchmark.main(argv) == 2
    assert "max_model_len is 256" in capsys.readouterr().err


def test_offline_the_default_gpt2_runs_on_random_weights(monkeypatch, tmp_path, capsys, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NANOVLLM_MODELS_DIR", str(tmp_path))  # no earlier download of gpt2
    argv = ["--batch-sizes", "1", "--input-len", "4", "--output-len", "2", "--prefill-len", "",
            "--reps", "1", "--num-kv-blocks", "16", "--json"]
    assert benchmark.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["model"]["name"], data["model"]["dummy"], data["model"]["n_layer"]) == \
        ("gpt2", True, 12)
    [note] = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert "RANDOM weights" in note


def test_offline_without_the_fallback_fails_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NANOVLLM_MODELS_DIR", str(tmp_path))
    assert benchmark.main(["--no-allow-dummy-fallback", "--reps", "1"]) == 1
    [err] = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("error: cannot download gpt2: HF_HUB_OFFLINE=1 is set;")


def test_dataset_arguments():
    args = parse("--dataset-name", "custom", "--dataset-path", "p.jsonl", "--batch-sizes", "1,4",
                 "--output-len", "8", "--prefill-len", "16")
    assert benchmark.grid(args) == [Cell(1, None, 8), Cell(4, None, 8), Cell(1, 16, 1)]
    assert str(Cell(4, None, 8)) == "4 x dataset -> 8"
    assert benchmark.check_args(args, benchmark.grid(args)) is None
    for bad in (parse("--dataset-name", "custom"), parse("--dataset-path", "p.jsonl"),
                parse("--dataset-name", "custom", "--dataset-path", "p.jsonl", "--compare",
                      "transformers")):
        assert "--dataset" in benchmark.check_args(bad, benchmark.grid(bad))
    with pytest.raises(SystemExit):
        parse("--dataset-name", "sharegpt")


def test_a_dataset_is_read_in_file_order_and_cycled(tiny_ckpt, tmp_path):
    from nanovllm.tokenizer import Tokenizer

    tok = Tokenizer(tiny_ckpt, None)
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "def f(x):"}\n\n{"prompt": "return x", "note": 1}\n')
    dataset = benchmark.load_dataset(str(path), tok)
    assert dataset == [tok.encode("def f(x):"), tok.encode("return x")]
    source = benchmark.Prompts(None, 0, dataset)
    cell = Cell(3, None, 4)
    assert source.take(cell) == [dataset[0], dataset[1], dataset[0]]
    assert source.take(cell) == [dataset[1], dataset[0], dataset[1]]
    for text, line in (('{"prompt": "a"}\nnot json\n', 2), ('{"text": "a"}\n', 1),
                       ('["a"]\n', 1), ('{"prompt": ""}\n', 1)):
        path.write_text(text)
        with pytest.raises(ValueError, match=f"line {line}: expected"):
            benchmark.load_dataset(str(path), tok)
    path.write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        benchmark.load_dataset(str(path), tok)


def test_speculation_on_a_dataset(tiny_ckpt, tmp_path, capsys):
    """The draft is the target itself: every greedy proposal is accepted, the output unchanged."""
    out, prompts = tmp_path / "bench.json", tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "def f(x):\n    return x\n", "import os\nimport sys\n", "class A:\n    pass\n")))
    spec = json.dumps({"model": str(tiny_ckpt), "num_speculative_tokens": 3,
                       "disable_by_batch_size": None,  # batch 2 speculates too
                       "adaptive": False})  # k = 3 always: the target as its draft never pays
    argv = ["--model", str(tiny_ckpt), "--dataset-name", "custom", "--dataset-path",
            str(prompts), "--batch-sizes", "1,2", "--output-len", "8", "--prefill-len", "",
            "--reps", "2", "--num-kv-blocks", "128", "--speculative-config", spec,
            "--json", str(out)]
    assert benchmark.main(argv) == 0
    table = capsys.readouterr().out
    assert "prompts: 3 from " in table and "2 x dataset -> 8" in table
    assert "step cost k=1.." in table and "k chosen" in table
    data = json.loads(out.read_text())
    assert data["settings"]["dataset"]["prompts"] == 3
    for cell in data["results"]:
        a = cell["acceptance"]
        assert a["identical"] and a["proposed"] > 0 and a["accepted"] == a["proposed"]
        # k fixed at 3: every decode that could chose it (the last tokens cap it lower)
        assert a["chosen_k"][3] > 0 and a["step_cost"][3] > 1
        runs = cell["nanovllm"]["runs"]
        assert len(runs) == 2 and runs[0]["prompt_tokens"] != runs[1]["prompt_tokens"]


def test_a_dataset_prompt_longer_than_the_context_is_refused(tiny_ckpt, tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x = 1\n" * 200}) + "\n")
    argv = ["--model", str(tiny_ckpt), "--dataset-name", "custom", "--dataset-path", str(path),
            "--batch-sizes", "1", "--output-len", "8", "--prefill-len", "", "--num-kv-blocks", "64"]
    assert benchmark.main(argv) == 2
    assert "max_model_len is 256" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (MODELS / "code-6l").is_dir() or not (MODELS / "code-2l").is_dir(),
                    reason="../shared/models/code-6l and code-2l are absent")
@pytest.mark.parametrize("spec", [
    {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3,
     "prompt_lookup_min": 1, "adaptive": False},
    {"model": str(MODELS / "code-2l"), "num_speculative_tokens": 4, "adaptive": False}])
def test_code_models_accept_on_code_that_repeats(spec, tmp_path, capsys):
    """The trained pair on the prompts the docs' acceptance table uses: real acceptance (some
    proposals rejected, many kept), the greedy output unchanged."""
    out = tmp_path / "bench.json"
    argv = ["--model", str(MODELS / "code-6l"), "--dataset-name", "custom", "--dataset-path",
            str(CODE_PROMPTS), "--batch-sizes", "1", "--output-len", "16", "--prefill-len", "",
            "--reps", "2", "--num-kv-blocks", "128", "--speculative-config", json.dumps(spec),
            "--json", str(out)]
    assert benchmark.main(argv) == 0
    [cell] = json.loads(out.read_text())["results"]
    a = cell["acceptance"]
    assert a["identical"] and 0 < a["accepted"] < a["proposed"]
    assert a["mean_acceptance_length"] > 1.5
