"""nanovllm.model_loading decides the dummy fallback (`allow_dummy_fallback`): random weights
for a preset name, and only when the hub is unreachable.

The hub is made unreachable as tests/scripts do it: HF_HUB_OFFLINE=1, or HF_ENDPOINT at a port
where nobody listens. A fallback loads the real gpt2 dummy preset (written once to the cache,
then about a second to load); every refusal fails before anything is loaded.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from nanovllm import EngineConfig
from nanovllm.hub import DownloadError, HubUnavailableError
from nanovllm.model import CheckpointError
from nanovllm.model.checkpoint.dummy import DUMMY_KEY, dummy_checkpoint_dir
from nanovllm.model_loading import load_model, preset_for
from tests.scripts.fake_hub import FakeHub

OFFLINE = {"HF_HUB_OFFLINE": "1"}
REFUSED = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9: connection refused


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """hub(env) sets the hub up as `env` says; models/ is empty, so nothing was downloaded."""
    monkeypatch.setenv("NANOVLLM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def set_env(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    return set_env


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_preset_names():
    assert preset_for("gpt2") == "gpt2" and preset_for("distilbert/distilgpt2") == "distilgpt2"
    assert preset_for("openai-community/gpt2-medium") == "gpt2-medium"
    for other in ("someone/gpt2", "models/gpt2", "./gpt2", "gpt3"):
        assert preset_for(other) is None


@pytest.mark.parametrize("model, env", [("gpt2", OFFLINE), ("openai-community/gpt2", REFUSED)],
                         ids=["HF_HUB_OFFLINE", "connection-refused"])
def test_unreachable_hub_falls_back_to_the_presets_random_weights(hub, caplog, model, env):
    hub(env)
    loaded = load_model(EngineConfig(model, allow_dummy_fallback=True))
    assert loaded.is_dummy and loaded.path == dummy_checkpoint_dir("gpt2")
    assert (loaded.config.n_layer, loaded.config.n_embd) == (12, 768)
    [note] = warnings(caplog)
    assert note.startswith("the Hugging Face hub is unreachable, so loading a dummy gpt2 "
                           f"checkpoint with RANDOM weights (cannot download {model}: ")
    assert "for random weights instead" not in note  # the reason only, not the hint


def test_without_the_flag_an_unreachable_hub_is_a_one_line_error(hub, caplog):
    hub(OFFLINE)
    with pytest.raises(HubUnavailableError) as err:
        load_model(EngineConfig("gpt2"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot download gpt2: HF_HUB_OFFLINE=1")
    assert "nanovllm serve gpt2 --load-format dummy" in message  # a command that works
    assert "--allow-dummy-fallback" in message
    assert warnings(caplog) == []


@pytest.mark.parametrize("model, error", [
    ("someone/gpt2-finetune", HubUnavailableError),  # a repo, but no preset: no shapes to copy
    ("./no/such/gpt2", FileNotFoundError),           # a path: a typo, not a download
])
def test_no_fallback_for_anything_but_a_preset(hub, caplog, model, error):
    hub(OFFLINE)
    with pytest.raises(error):
        load_model(EngineConfig(model, allow_dummy_fallback=True))
    assert warnings(caplog) == []


def test_a_local_directory_is_loaded_as_is(hub, tiny_ckpt, caplog):
    hub(OFFLINE)
    loaded = load_model(EngineConfig(str(tiny_ckpt), allow_dummy_fallback=True))
    assert loaded.path == tiny_ckpt and loaded.config.n_layer == 2
    [note] = warnings(caplog)  # no fallback; only that the checkpoint's weights are random
    assert note.startswith(f"{tiny_ckpt} is a checkpoint with RANDOM weights")


def test_a_hub_that_answers_with_an_error_is_not_unreachable(hub, tiny_ckpt, caplog):
    server = FakeHub.from_dir("someone/else", tiny_ckpt)  # openai-community/gpt2 is a 404 here
    try:
        hub({"HF_ENDPOINT": server.url})
        with pytest.raises(DownloadError):
            load_model(EngineConfig("gpt2", allow_dummy_fallback=True))
    finally:
        server.close()
    assert warnings(caplog) == []


def test_a_broken_checkpoint_fails_loudly(hub, tiny_ckpt, tmp_path):
    hub(OFFLINE)
    by_hand = shutil.copytree(tiny_ckpt, tmp_path / "models" / "gpt2")  # used without the hub
    (by_hand / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_model(EngineConfig("gpt2", allow_dummy_fallback=True))


def test_a_random_weight_checkpoint_nanovllm_wrote_is_loaded_with_one_warning(tiny_ckpt, tmp_path,
                                                                           caplog):
    """LLM(dir) on a dummy checkpoint says the weights are random; a trained one loads quietly."""
    loaded = load_model(EngineConfig(str(tiny_ckpt)))
    [note] = warnings(caplog)
    assert loaded.is_dummy and note == (f"{tiny_ckpt} is a checkpoint with RANDOM weights, "
                                        "written by nanovllm: its text is noise")
    trained = tmp_path / "trained"
    shutil.copytree(tiny_ckpt, trained)
    config = json.loads((trained / "config.json").read_text())
    del config[DUMMY_KEY]  # what a checkpoint from the hub, or saved by transformers, looks like
    (trained / "config.json").write_text(json.dumps(config))
    caplog.clear()
    assert not load_model(EngineConfig(str(trained))).is_dummy and warnings(caplog) == []
