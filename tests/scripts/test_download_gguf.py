"""`org/repo:Q4_K_M`: a GGUF file picked from a hub repository by its quantization tag, as
`llama-server -hf` picks it, downloaded alone and loaded; later runs use the local copy without
the hub. Downloads run against FakeHub (HF_ENDPOINT points at it)."""

from __future__ import annotations

import pytest

from nanovllm import LLM
from nanovllm.hub import DownloadError
from nanovllm.hub_gguf import parse_gguf_ref, pick_file
from tests.scripts.fake_hub import FakeHub

REPO = "org/tiny-GGUF"
FILES = ["README.md", "tiny-Q4_K_M.gguf", "tiny-Q4_K_S.gguf", "tiny.Q8_0.gguf",
         "mmproj-tiny-Q8_0.gguf", "big/tiny-Q6_K-00001-of-00002.gguf",
         "big/tiny-Q6_K-00002-of-00002.gguf", "tiny-IQ4_XS.gguf"]


def test_names():
    assert parse_gguf_ref(f"{REPO}:Q4_K_M") == (REPO, "Q4_K_M")
    assert parse_gguf_ref(f"hf.co/{REPO}:q8_0") == (REPO, "q8_0")
    for name in ("gpt2", REPO, "/models/tiny.gguf", "./a/b:c", "models/a/b:Q4_0"):
        assert parse_gguf_ref(name) is None


def test_the_file_is_picked_by_its_tag():
    assert pick_file(FILES, "Q4_K_M", REPO) == "tiny-Q4_K_M.gguf"
    assert pick_file(FILES, "q4_k_s", REPO) == "tiny-Q4_K_S.gguf"
    assert pick_file(FILES, "Q8_0", REPO) == "tiny.Q8_0.gguf"  # not the vision projector
    with pytest.raises(DownloadError, match="no GGUF file tagged Q5_K_M; its GGUF files: big/"):
        pick_file(FILES, "Q5_K_M", REPO)
    with pytest.raises(DownloadError, match="split into several files"):
        pick_file(FILES, "Q6_K", REPO)
    with pytest.raises(DownloadError, match="matches several files"):
        pick_file(["a-Q4_0.gguf", "b-Q4_0.gguf"], "Q4_0", REPO)


@pytest.fixture
def hub(gguf_file, monkeypatch, tmp_path):
    _, f32 = gguf_file("gpt2")
    _, q8 = gguf_file("gpt2", "q8_0")
    server = FakeHub(REPO, {"README.md": b"# tiny", "tiny-F32.gguf": f32.read_bytes(),
                            "tiny-Q8_0.gguf": q8.read_bytes()})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NANOVLLM_MODELS_DIR", str(tmp_path / "models"))
    yield server
    server.close()


def test_only_the_tagged_file_is_downloaded_then_used_offline(hub, monkeypatch, tmp_path):
    first = LLM(f"{REPO}:Q8_0", num_kv_blocks=16)
    assert hub.downloaded() == {"tiny-Q8_0.gguf"}
    assert (tmp_path / "models" / REPO / "tiny-Q8_0.gguf").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = LLM(f"{REPO}:Q8_0", num_kv_blocks=16)
    assert again.engine.model_path == first.engine.model_path


def test_an_unknown_tag_names_the_files_there(hub):
    with pytest.raises(DownloadError, match="tiny-F32.gguf, tiny-Q8_0.gguf"):
        LLM(f"{REPO}:Q4_K_M", num_kv_blocks=16)
