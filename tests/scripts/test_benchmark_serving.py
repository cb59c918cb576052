"""scripts/benchmark_serving.py (`nanovllm bench serve`): arguments, workload, metrics, and short
real runs against a real server (`python -m nanovllm.server` on the tiny checkpoint, over loopback)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest

from nanovllm.scripts import benchmark_serving as bs
from nanovllm.scripts.benchmark_serving import RequestResult


def parse(*argv: str) -> argparse.Namespace:
    return bs.add_args(argparse.ArgumentParser()).parse_args(list(argv))


# --------------------------------------------------------------------------- no server needed


def test_defaults_and_argument_checks():
    args = parse()
    assert bs.base_url(args) == "http://127.0.0.1:8000"
    assert (args.num_prompts, args.max_concurrency, args.request_rate, args.input_len,
            args.output_len, args.ignore_eos) == (100, None, math.inf, 32, 128, True)
    assert bs.base_url(parse("--port", "9000", "--host", "10.0.0.1")) == "http://10.0.0.1:9000"
    assert bs.base_url(parse("--base-url", "http://h:1/")) == "http://h:1"
    assert parse("--concurrency-sweep", "1,16,64").concurrency_sweep == [1, 16, 64]
    assert parse("--random-input-len", "7").input_len == 7  # vLLM's spelling works too
    assert bs.check_args(args) is None
    for bad, word in ((["--num-prompts", "0"], "--num-prompts"),
                      (["--request-rate", "0"], "--request-rate"),
                      (["--random-range-ratio", "1.5"], "--random-range-ratio"),
                      (["--max-concurrency", "0"], "--max-concurrency"),
                      (["--concurrency-sweep", "0,4"], "--concurrency-sweep"),
                      (["--max-seconds", "-1"], "--max-seconds")):
        assert word in bs.check_args(parse(*bad))


def test_prompts_have_exact_or_bounded_lengths():
    args = parse("--num-prompts", "50", "--input-len", "20", "--output-len", "10",
                 "--vocab-size", "100")
    prompts = bs.make_prompts(args, stream=1)
    assert len(prompts) == 50
    assert {len(p.token_ids) for p in prompts} == {20} and {p.output_len for p in prompts} == {10}
    assert all(0 <= t < 99 for p in prompts for t in p.token_ids)  # the last id (EOS) left out
    assert bs.make_prompts(args, stream=1) == prompts
    assert bs.make_prompts(args, stream=2) != prompts  # no prefix-cache hits across levels
    ranged = bs.make_prompts(parse("--input-len", "20", "--random-range-ratio", "0.5",
                                   "--vocab-size", "100"), 1)
    lengths = {len(p.token_ids) for p in ranged}
    assert min(lengths) >= 10 and max(lengths) <= 30 and len(lengths) > 3


def test_request_body_streams_token_ids_and_ignores_eos():
    prompt = bs.Prompt([1, 2, 3], 5)
    body = bs.request_body(parse(), "m", prompt)
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 5 and body["stream"] is True
    assert body["ignore_eos"] is True and body["stream_options"] == {"include_usage": True}
    assert "ignore_eos" not in bs.request_body(parse("--no-ignore-eos"), "m", prompt)


def test_metrics_are_computed_like_vllm():
    results = [RequestResult(True, 10, output_tokens=5, ttft=0.1, latency=0.5,
                             itl=[0.1, 0.1, 0.1, 0.1]),
               RequestResult(True, 20, output_tokens=3, ttft=0.3, latency=0.5, itl=[0.1, 0.1]),
               RequestResult(False, 10, error="HTTP 400: bad")]
    b = bs.summarize(results, duration=2.0, concurrency=4, rate=math.inf)
    assert (b.completed, b.failed, b.total_input_tokens, b.total_output_tokens) == (2, 1, 30, 8)
    assert b.request_throughput == 1.0 and b.output_throughput == 4.0
    assert b.total_token_throughput == 19.0
    assert b.ttft.mean == pytest.approx(200.0) and b.ttft.median == pytest.approx(200.0)
    assert b.tpot.mean == pytest.approx(100.0)  # (0.5-0.1)/4 and (0.5-0.3)/2, in ms
    assert b.itl.median == pytest.approx(100.0) and b.e2el.p99 == pytest.approx(500.0)
    assert b.errors == {"HTTP 400: bad": 1}
    report = bs.format_result(b)
    assert "Successful requests:" in report and "P99 ITL (ms):" in report and "HTTP 400" in report


def test_the_vocabulary_is_the_flag_the_servers_or_gpt2s(capsys):
    assert bs.vocabulary(parse("--vocab-size", "7"), {"vocab_size": 1024}) == 7
    assert bs.vocabulary(parse(), {"vocab_size": 1024}) == 1024
    assert capsys.readouterr().err == ""
    assert bs.vocabulary(parse(), {"id": "vllm-model"}) == 50257  # a server that does not say
    assert "does not report its vocabulary" in capsys.readouterr().err


def test_failures_are_summed_with_their_reasons():
    ok = RequestResult(True, 4, output_tokens=2, ttft=0.1, latency=0.2, itl=[0.1])
    bad, worse = RequestResult(False, 4, error="HTTP 400: a"), RequestResult(False, 4, error="b")
    levels = [bs.summarize([ok, bad, bad], 1.0, 1, math.inf),
              bs.summarize([bad, worse], 1.0, 4, math.inf)]
    assert bs.why_failed(levels) == "3 x HTTP 400: a; 1 x b"


def test_no_server_is_one_clear_line(capsys):
    port = _free_port()
    assert bs.main(["--port", str(port), "--num-prompts", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no server at http://127.0.0.1:{port}" in err
    assert "nanovllm serve" in err


def test_plot_without_matplotlib_says_so(monkeypatch, capsys):
    monkeypatch.setattr(bs, "_have_matplotlib", lambda: False)
    assert bs.main(["--plot", "x.png"]) == 1
    assert "--plot needs matplotlib" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_ckpt):
    port = _free_port()
    cmd = [sys.executable, "-m", "server", str(tiny_ckpt), "--port", str(port),
           "--num-kv-blocks", "256", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_until_healthy(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not come up within 60 s")


def test_concurrency_sweep_against_a_real_server(server, tmp_path, capsys):
    out, png = tmp_path / "serve.json", tmp_path / "serve.png"
    argv = ["--base-url", server, "--num-prompts", "8",
            "--input-len", "8", "--output-len", "6", "--concurrency-sweep", "1,4",
            "--json", str(out), "--plot", str(png)]
    assert bs.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("Serving Benchmark Result") == 2 and "TTFT med/p99" in printed
    data = json.loads(out.read_text())
    assert data["server"]["max_model_len"] == 256
    assert data["server"]["vocab_size"] == 1024  # the prompts' ids, from /v1/models
    assert [r["max_concurrency"] for r in data["results"]] == [1, 4]
    for r in data["results"]:
        assert (r["completed"], r["failed"]) == (8, 0)
        assert r["total_input_tokens"] == 64 and r["total_output_tokens"] == 48  # ignore_eos
        assert r["ttft"]["median"] > 0 and r["tpot"]["mean"] > 0 and r["output_throughput"] > 0
    assert png.stat().st_size > 10_000


def test_request_rate_and_max_seconds_bound_the_run(server, capsys):
    start = time.monotonic()
    argv = ["--base-url", server, "--vocab-size", "1024", "--num-prompts", "1000",
            "--input-len", "4", "--output-len", "4", "--request-rate", "20",
            "--max-seconds", "0.5", "--random-range-ratio", "0.5", "--json"]
    assert bs.main(argv) == 0
    assert time.monotonic() - start < 20
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert 1 <= result["completed"] < 100 and result["failed"] == 0
    assert result["request_rate"] == 20.0


def test_a_bad_workload_fails_on_the_test_request(server, capsys):
    # Token ids beyond the tiny model's 1,024-token vocabulary: the server answers 400.
    argv = ["--base-url", server, "--vocab-size", "50257", "--input-len", "64",
            "--num-prompts", "4"]
    assert bs.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the test request failed: HTTP 400")


def _seed_with_partial_failures(args: argparse.Namespace, vocab: int) -> int:
    """A seed whose test request fits the vocabulary and whose run has requests that do not."""
    for seed in range(100):
        args.seed = seed
        fits = [max(p.token_ids) < vocab for p in bs.make_prompts(args, stream=1)]
        if max(bs.make_prompts(args, stream=0, count=1)[0].token_ids) < vocab and \
                any(fits) and not all(fits):
            return seed
    raise AssertionError("no such seed")


def test_requests_that_fail_are_explained_and_fail_the_command(server, capsys):
    """Prompt ids beyond the tiny model's 1,024 tokens (a workload made for a larger vocabulary):
    the requests that hold one get 400s; the report says why, and the command exits 1."""
    argv = ["--base-url", server, "--vocab-size", "1100", "--num-prompts", "8",
            "--input-len", "8", "--output-len", "2", "--max-concurrency", "4"]
    seed = _seed_with_partial_failures(parse(*argv), 1024)
    assert bs.main([*argv, "--seed", str(seed)]) == 1
    captured = capsys.readouterr()
    assert "Failed requests:" in captured.out and "failed: HTTP 400" in captured.out
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and " of 8 requests failed: " in last
    assert "x HTTP 400: " in last


def test_bench_serve_runs_in_the_base_install(server):
    """httpx is a dev dependency: `nanovllm bench serve` runs on the base install's client."""
    code = ("import sys; sys.modules['httpx'] = None\n"  # import httpx now fails
            "from nanovllm.cli import main\n"
            f"sys.exit(main(['bench', 'serve', '--base-url', {server!r}, '--num-prompts', '2',"
            " '--input-len', '4', '--output-len', '2']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Successful requests: +2\n", result.stdout)
