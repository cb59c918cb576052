"""--prefix-cache-dir through real `nanovllm serve` processes: a long prompt sent before and after
a restart gets the same greedy answer, the second time mostly from disk (counted in
usage.prompt_tokens_details.cached_tokens and /metrics); a KV dtype change reuses nothing; a
damaged directory (any file in it) costs a recomputation and one warning, never an error."""

from __future__ import annotations

import time

import httpx
import numpy as np
import openai
import pytest
from server_helpers import ServeProcess, metric

MODEL = "tiny"
BLOCK = 16
PROMPT = np.random.default_rng(3).integers(0, 1000, 200).tolist()
CACHED = (len(PROMPT) - 1) // BLOCK * BLOCK  # every full block but the one holding the last token


@pytest.fixture
def serve(tiny_ckpt, tmp_path):
    started: list[ServeProcess] = []

    def start(*flags: str) -> ServeProcess:
        srv = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "256", "--served-model-name", MODEL,
                           "--prefix-cache-dir", str(tmp_path / "kv"), *flags)
        started.append(srv)
        srv.wait_ready()
        return srv

    yield start
    for srv in started:
        srv.kill()


def complete(srv: ServeProcess) -> tuple[str, int]:
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0,
                                    extra_body={"ignore_eos": True})
    return out.choices[0].text, out.usage.prompt_tokens_details.cached_tokens


def disk_metric(srv: ServeProcess, name: str) -> float:
    text = httpx.get(f"{srv.url}/metrics").text
    return metric(text, f"nanovllm:prefix_cache_disk_{name}_total", model_name=MODEL)


def stop_once_written(srv: ServeProcess, blocks: int) -> None:
    """Stops the server once its writer has written `blocks` blocks (it runs beside the steps)."""
    deadline = time.monotonic() + 60
    while disk_metric(srv, "writes") < blocks:
        assert time.monotonic() < deadline, srv.log
        time.sleep(0.05)
    assert srv.stop() == 0, srv.log


def test_a_restart_answers_the_same_from_disk(serve, tmp_path):
    first = serve()
    text, cached = complete(first)
    assert cached == 0
    stop_once_written(first, CACHED // BLOCK)

    second = serve()
    assert complete(second) == (text, CACHED)
    assert disk_metric(second, "hits") == CACHED // BLOCK
    assert disk_metric(second, "invalid") == 0
    assert second.stop() == 0, second.log

    other_kv = serve("--kv-cache-dtype", "float16")  # other K/V bytes: nothing to reuse
    assert complete(other_kv)[1] == 0
    assert disk_metric(other_kv, "hits") == 0
    assert other_kv.stop() == 0, other_kv.log


def test_a_damaged_directory_costs_a_recomputation_and_one_warning(serve, tmp_path):
    first = serve()
    text, _ = complete(first)
    stop_once_written(first, CACHED // BLOCK)
    files = list((tmp_path / "kv").rglob("*.kvb"))
    assert len(files) >= CACHED // BLOCK
    for path in files:  # every block file cut short
        path.write_bytes(path.read_bytes()[:-1])

    second = serve()
    assert complete(second) == (text, 0)
    assert disk_metric(second, "invalid") == 1  # the first block: nothing past it is read
    assert second.log.count("truncated, corrupted or not this model's") == 1
    assert second.stop() == 0, second.log


def test_every_file_damaged_still_starts_and_answers(serve, tmp_path):
    """Bytes flipped in every file the directory holds, the checkpoint digests under
    checkpoints/ included (tests/kv_disk tries every other kind of damage on the engine)."""
    first = serve()
    text, _ = complete(first)
    stop_once_written(first, CACHED // BLOCK)
    files = [p for p in (tmp_path / "kv").rglob("*") if p.is_file()]
    assert any(p.parent.name == "checkpoints" for p in files)
    for path in files:
        data = bytearray(path.read_bytes())
        for i in range(0, len(data), 7):
            data[i] ^= 0xA5
        path.write_bytes(bytes(data))

    second = serve()
    assert complete(second) == (text, 0)
    assert "is not a digest this server wrote" in second.log
    assert second.stop() == 0, second.log


def test_an_unusable_directory_stops_the_server_at_start(tiny_ckpt, tmp_path):
    (tmp_path / "a-file").write_text("")
    srv = ServeProcess(str(tiny_ckpt), "--num-kv-blocks", "64",
                       "--prefix-cache-dir", str(tmp_path / "a-file"))
    try:
        assert srv.proc.wait(120) == 2
    finally:
        srv.kill()
    message = f"prefix_cache_dir: {tmp_path / 'a-file'} is not a directory"
    deadline = time.monotonic() + 10  # its last lines may still be on their way to the log
    while message not in srv.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert message in srv.log, srv.log
