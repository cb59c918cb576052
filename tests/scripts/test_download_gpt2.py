"""`nanovllm download` and nanovllm.hub: file selection, offline behaviour, the staging directory
and what a rerun keeps, verification and resolve_model.

Downloads run against FakeHub, a local stand-in for the hub's HTTP API (HF_ENDPOINT points at
it), through the real huggingface_hub client: the real hub is unreachable in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import COMMIT, FakeHub

from nanovllm.hub import (
    MARKER,
    DownloadError,
    HubUnavailableError,
    check_file_set,
    download_model,
    read_marker,
    repo_id_for,
    resolve_model,
    select_files,
    staging_dir,
    verify_checkpoint,
)
from nanovllm.scripts import download_gpt2

SCRIPT = Path(download_gpt2.__file__)

# The file list of openai-community/gpt2 on the hub: six copies of the weights, and a second
# config and tokenizer under onnx/.
GPT2_REPO_FILES = [
    ".gitattributes", "64-8bits.tflite", "64-fp16.tflite", "64.tflite", "README.md",
    "config.json", "flax_model.msgpack", "generation_config.json", "merges.txt",
    "model.safetensors", "onnx/config.json", "onnx/decoder_model.onnx",
    "onnx/decoder_model_merged.onnx", "onnx/decoder_with_past_model.onnx",
    "onnx/generation_config.json", "onnx/merges.txt", "onnx/special_tokens_map.json",
    "onnx/tokenizer.json", "onnx/tokenizer_config.json", "onnx/vocab.json", "pytorch_model.bin",
    "rust_model.ot", "tf_model.h5", "tokenizer.json", "tokenizer_config.json", "vocab.json",
]
SERVING_FILES = ["config.json", "generation_config.json", "merges.txt", "model.safetensors",
                 "tokenizer.json", "tokenizer_config.json", "vocab.json"]


def is_complete(model_dir: Path) -> bool:
    return bool(read_marker(model_dir))


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    full_env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- names, args, files


def test_repo_ids():
    assert repo_id_for("gpt2") == "openai-community/gpt2"
    assert repo_id_for("gpt2-xl") == "openai-community/gpt2-xl"
    assert repo_id_for("distilgpt2") == "distilbert/distilgpt2"
    assert repo_id_for("someone/my-gpt2") == "someone/my-gpt2"
    for bad in ("llama", "a/b/c", "/gpt2", "org/"):
        with pytest.raises(ValueError, match="unknown model"):
            repo_id_for(bad)


def test_args():
    parse = download_gpt2.add_args(argparse.ArgumentParser()).parse_args
    args = parse([])
    assert (args.model, args.output, args.revision, args.force, args.no_verify) == \
        ("gpt2", None, None, False, False)
    args = parse(["gpt2-medium", "-o", "/x", "--revision", "abc1234", "--force", "--no-verify"])
    assert (args.model, args.output, args.revision, args.force, args.no_verify) == \
        ("gpt2-medium", "/x", "abc1234", True, True)


def test_script_runs_standalone():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--revision" in result.stdout and "gpt2-medium" in result.stdout


def test_unknown_model_is_one_line_error(tmp_path):
    result = run_cli("llama", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown model 'llama'" in result.stderr and "Traceback" not in result.stderr


def test_select_files_keeps_only_what_serving_reads():
    assert select_files(GPT2_REPO_FILES) == SERVING_FILES


def test_select_files_sharded_weights():
    files = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin",
             "pytorch_model.bin.index.json", "onnx/model.safetensors", "tokenizer.json"]
    assert select_files(files) == ["config.json", "model-00001-of-00002.safetensors",
                                   "model-00002-of-00002.safetensors",
                                   "model.safetensors.index.json", "tokenizer.json"]


def test_check_file_set():
    check_file_set(SERVING_FILES, "r")
    check_file_set(["config.json", "model.safetensors", "vocab.json", "merges.txt"], "r")
    with pytest.raises(DownloadError, match=r"safetensors"):
        check_file_set(select_files(["config.json", "pytorch_model.bin", "tokenizer.json"]), "r")
    with pytest.raises(DownloadError, match="tokenizer"):
        check_file_set(["config.json", "model.safetensors"], "r")


# --------------------------------------------------------------------------- offline


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "unreachable"])
def test_offline_is_one_clear_line(tmp_path, env):
    out = tmp_path / "gpt2"
    staging_dir(out).mkdir()  # a previous interrupted run
    (staging_dir(out) / "config.json").write_text("{}")
    start = time.monotonic()
    result = run_cli("gpt2", "-o", str(out), env=env, cwd=tmp_path)
    assert time.monotonic() - start < 15  # a refused connection, not a long timeout
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot download gpt2" in lines[0] and "--load-format dummy" in lines[0]
    assert result.stdout == ""
    assert not out.exists()  # nothing that looks complete
    assert not is_complete(staging_dir(out))


def test_offline_resolve_model_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOVLLM_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnavailableError) as err:
        resolve_model("gpt2-medium")
    assert "\n" not in str(err.value)
    assert "nanovllm serve gpt2-medium --load-format dummy" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        resolve_model("gpt2")


# --------------------------------------------------------------------------- downloads (fake hub)


@pytest.fixture
def fake_hub(tiny_ckpt, monkeypatch):
    extra = {"pytorch_model.bin": b"0" * 1000, "onnx/config.json": b"{}", "README.md": b"# x"}
    server = FakeHub.from_dir("openai-community/gpt2", tiny_ckpt, extra)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    server.close()


def test_download_fetches_only_serving_files(fake_hub, tmp_path):
    out = download_model("gpt2", tmp_path / "gpt2")
    assert out == tmp_path / "gpt2"
    assert fake_hub.downloaded() == set(SERVING_FILES)
    assert is_complete(out) and not staging_dir(out).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([*SERVING_FILES, MARKER])
    marker = read_marker(out)
    assert (marker["repo_id"], marker["revision"], marker["commit"]) == \
        ("openai-community/gpt2", "main", COMMIT)
    verify_checkpoint(out)


def test_complete_download_is_reused(fake_hub, tmp_path):
    download_model("gpt2", tmp_path / "gpt2")
    before = len(fake_hub.requests)
    assert download_model("gpt2", tmp_path / "gpt2") == tmp_path / "gpt2"
    assert len(fake_hub.requests) == before
    download_model("gpt2", tmp_path / "gpt2", force=True)
    assert len(fake_hub.requests) > before


def test_download_refuses_a_foreign_directory(fake_hub, tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="--force"):
        download_model("gpt2", tmp_path / "gpt2")
    download_model("gpt2", tmp_path / "gpt2", force=True)
    assert is_complete(tmp_path / "gpt2") and not (tmp_path / "gpt2" / "notes.txt").exists()


def test_download_refuses_other_architectures_before_the_weights(tiny_ckpt, tmp_path,
                                                                  monkeypatch):
    config = {**json.loads((tiny_ckpt / "config.json").read_text()), "model_type": "llama"}
    server = FakeHub.from_dir("meta/llama", tiny_ckpt, {"config.json": json.dumps(config).encode()})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        result = run_cli("meta/llama", "-o", str(tmp_path / "m"), env={"HF_ENDPOINT": server.url})
    finally:
        server.close()
    assert result.returncode == 1
    assert "model_type 'llama' is not 'gpt2'" in result.stderr and "Traceback" not in result.stderr
    assert server.downloaded() == {"config.json"}
    assert not (tmp_path / "m").exists() and not staging_dir(tmp_path / "m").exists()


def test_download_rejects_weights_that_do_not_load(tiny_ckpt, tmp_path, monkeypatch):
    truncated = (tiny_ckpt / "model.safetensors").read_bytes()[:5000]
    server = FakeHub.from_dir("someone/gpt2", tiny_ckpt, {"model.safetensors": truncated})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        with pytest.raises(DownloadError, match="does not load"):
            download_model("someone/gpt2", tmp_path / "m")
    finally:
        server.close()
    # No final directory, and no staging dir whose bad files a rerun would keep.
    assert not (tmp_path / "m").exists() and not staging_dir(tmp_path / "m").exists()


def test_killed_download_leaves_only_staging_and_a_rerun_keeps_finished_files(fake_hub, tmp_path):
    fake_hub.stall = ("model.safetensors", 1000)  # the weights stop arriving; the rest finish
    out = tmp_path / "gpt2"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "gpt2", "-o", str(out)],
                            env={**os.environ, "HF_ENDPOINT": fake_hub.url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _small_files_done(staging_dir(out)) and _weights_requested(fake_hub))
        proc.kill()  # as hard as an interruption gets
        proc.wait()
    finally:
        proc.kill()
    assert not out.exists() and not is_complete(staging_dir(out))
    before = len(fake_hub.requests)
    result = run_cli("gpt2", "-o", str(out), env={"HF_ENDPOINT": fake_hub.url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert is_complete(out) and not staging_dir(out).exists()
    again = {p.rsplit("/", 1)[-1] for m, p in fake_hub.requests[before:] if m == "GET"
             and "/resolve/" in p}
    assert again == {"model.safetensors"}  # the finished files were kept
    verify_checkpoint(out)


def test_interrupt_is_reported_in_one_line(fake_hub, tmp_path):
    fake_hub.stall = ("model.safetensors", 1000)
    out = tmp_path / "gpt2"
    # Ctrl-C as a terminal delivers it, whatever started the tests: a shell's background job
    # (`cmd &` without job control) passes SIGINT on ignored, and Python then keeps ignoring it.
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "gpt2", "-o", str(out)],
                            env={**os.environ, "HF_ENDPOINT": fake_hub.url,
                                 "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(lambda: _weights_requested(fake_hub))
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        fake_hub.release()  # the stalled transfer ends, so the worker thread can stop
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted;") and "rerun" in last and "gpt2.partial" in last
    assert stdout == "" and not out.exists()


def _small_files_done(staging: Path) -> bool:
    """Every small file is in place *and* recorded: huggingface_hub writes a file's metadata
    (what a rerun checks to keep it) just after moving the file in; a kill in between is a
    legitimate re-download, not what this test is about."""
    records = staging / ".cache" / "huggingface" / "download"
    return all((staging / f).is_file() and (records / f"{f}.metadata").is_file()
               for f in SERVING_FILES if f != "model.safetensors")


def _weights_requested(hub: FakeHub) -> bool:
    return any(m == "GET" and p.endswith("/model.safetensors") for m, p in hub.requests)


def _wait_for(condition) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("the download never got under way")


# --------------------------------------------------------------------------- verification


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    return Path(shutil.copytree(tiny_ckpt, tmp_path / "ckpt"))


def test_verify_accepts_a_dummy_checkpoint(tiny_ckpt):
    config = verify_checkpoint(tiny_ckpt)
    assert (config.n_layer, config.n_embd, config.vocab_size) == (2, 64, 1024)


def test_verify_rejects_truncated_weights(ckpt_copy):
    weights = ckpt_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(DownloadError, match="does not load"):
        verify_checkpoint(ckpt_copy)


def test_verify_rejects_a_missing_tensor(ckpt_copy):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(ckpt_copy / "model.safetensors")
    del tensors["h.1.mlp.c_fc.weight"]
    save_file(tensors, ckpt_copy / "model.safetensors")
    with pytest.raises(DownloadError, match=r"h\.1\.mlp\.c_fc\.weight"):
        verify_checkpoint(ckpt_copy)


def test_verify_rejects_other_architectures(ckpt_copy):
    config = json.loads((ckpt_copy / "config.json").read_text())
    (ckpt_copy / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(DownloadError, match="model_type 'bert' is not 'gpt2'"):
        verify_checkpoint(ckpt_copy)


# --------------------------------------------------------------------------- resolve_model, dummy


def test_resolve_model(fake_hub, tiny_ckpt, tmp_path, monkeypatch):
    assert resolve_model(tiny_ckpt) == tiny_ckpt
    assert resolve_model(str(tiny_ckpt)) == tiny_ckpt
    with pytest.raises(FileNotFoundError):
        resolve_model("./no/such/dir")
    monkeypatch.setenv("NANOVLLM_MODELS_DIR", str(tmp_path / "models"))
    path = resolve_model("gpt2")
    assert path == tmp_path / "models" / "gpt2" and is_complete(path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a finished download needs no network
    assert resolve_model("gpt2") == path
    by_hand = Path(shutil.copytree(tiny_ckpt, tmp_path / "models" / "distilgpt2"))
    assert resolve_model("distilgpt2") == by_hand  # a checkpoint put there by hand is used
    with pytest.raises(HubUnavailableError):
        resolve_model("gpt2", revision="v2")  # a different revision must be downloaded
