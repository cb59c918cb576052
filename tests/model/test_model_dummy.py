"""Checkpoints we write ourselves: random weights with GPT-2's shapes, a config, a tokenizer.

Only the tiny model, GPT-2 124M (session fixture) and distilgpt2 get real weight files here; the
big presets (up to 6 GB for gpt2-xl) are checked through their config and tokenizer, with the
weight writer stubbed out, and through their published hyper-parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, GPT2TokenizerFast

import nanovllm.model.dummy
from nanovllm.model import (
    PRESETS,
    GPT2Config,
    cache_root,
    is_dummy_checkpoint,
    load_gpt2,
    write_dummy_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_GPT2_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
EOT = "<|endoftext|>"
TINY = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=1024, n_positions=64)

# name: (n_embd, n_layer, n_head, parameters as published, counting the tied LM head once)
PUBLISHED = {
    "gpt2": (768, 12, 12, 124_439_808),
    "gpt2-medium": (1024, 24, 16, 354_823_168),
    "gpt2-large": (1280, 36, 20, 774_030_080),
    "gpt2-xl": (1600, 48, 25, 1_557_611_200),
    "distilgpt2": (768, 6, 12, 81_912_576),
}


def config_json(model_dir) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def assert_tokenizer_covers_vocab(model_dir, vocab_size: int) -> None:
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    assert tok.get_vocab_size() == vocab_size
    assert tok.token_to_id(EOT) == vocab_size - 1
    assert all(tok.id_to_token(i) is not None for i in range(vocab_size))
    decoded = tok.decode_batch([[i] for i in range(vocab_size)], skip_special_tokens=False)
    assert all(isinstance(text, str) and text for text in decoded)
    assert decoded[-1] == EOT


# --- presets ---------------------------------------------------------------------------------------

def test_presets_are_the_published_gpt2_family():
    assert set(PRESETS) == set(PUBLISHED)
    for name, (n_embd, n_layer, n_head, params) in PUBLISHED.items():
        cfg = PRESETS[name]
        assert (cfg.n_embd, cfg.n_layer, cfg.n_head) == (n_embd, n_layer, n_head), name
        assert (cfg.vocab_size, cfg.n_positions, cfg.layer_norm_epsilon) == (50257, 1024, 1e-5), name
        assert cfg.eos_token_id == cfg.bos_token_id == 50256, name
        assert cfg.num_params == params, name


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_writes_config_and_tokenizer(preset, tmp_path, monkeypatch, gpt2_ckpt):
    """Weights stubbed out: the config and the 50,257-token tokenizer are what is checked here
    (gpt2_ckpt is requested so the 50,257-token tokenizer is trained, and cached, only once)."""
    monkeypatch.setattr(nanovllm.model.dummy, "random_weights", lambda cfg, seed=0: {})
    out = write_dummy_checkpoint(tmp_path / preset, preset)
    cfg = GPT2Config.from_json(out / "config.json")
    assert cfg == PRESETS[preset]
    raw = config_json(out)
    assert raw["_nanovllm_dummy"] is True and preset in raw["_nanovllm_note"]
    assert raw["model_type"] == "gpt2" and raw["activation_function"] == "gelu_new"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    assert is_dummy_checkpoint(out)
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == 50257


def test_gpt2_dummy_checkpoint_has_the_124m_shapes(gpt2_ckpt):
    cfg, weights = load_gpt2(gpt2_ckpt)
    assert cfg == PRESETS["gpt2"]
    n = weights.wte.size + weights.wpe.size + weights.ln_f_g.size + weights.ln_f_b.size
    n += sum(getattr(blk, f).size for blk in weights.blocks for f in blk.__slots__)
    assert n == 124_439_808
    assert is_dummy_checkpoint(gpt2_ckpt)
    assert_tokenizer_covers_vocab(gpt2_ckpt, 50257)


@pytest.mark.slow
def test_distilgpt2_dummy_checkpoint_loads_with_six_layers(tmp_path, gpt2_ckpt):
    cfg, weights = load_gpt2(write_dummy_checkpoint(tmp_path, "distilgpt2"))
    assert cfg.n_layer == 6 and len(weights.blocks) == 6
    assert (cfg.n_embd, cfg.n_head, cfg.vocab_size) == (768, 12, 50257)
    assert weights.blocks[5].fc_w.shape == (3072, 768)


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'gpt3'"):
        write_dummy_checkpoint(tmp_path, "gpt3")


# --- the tiny checkpoint and the weights ----------------------------------------------------------

def test_config_overrides_and_dummy_marker(tiny_ckpt):
    raw = config_json(tiny_ckpt)
    assert raw["_nanovllm_dummy"] is True
    assert (raw["n_layer"], raw["n_embd"], raw["n_head"], raw["vocab_size"], raw["n_positions"]) == \
        (2, 64, 4, 1024, 256)
    assert raw["eos_token_id"] == raw["bos_token_id"] == 1023  # the last id, as in GPT-2
    assert is_dummy_checkpoint(tiny_ckpt)


def test_is_dummy_checkpoint_is_false_for_other_directories(tmp_path):
    assert not is_dummy_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(GPT2Config().to_hf_dict()))
    assert not is_dummy_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    assert not is_dummy_checkpoint(tmp_path)


def test_weights_follow_gpt2_initialisation(tiny_model):
    cfg, w = tiny_model
    assert np.all(w.ln_f_g == 1) and np.all(w.ln_f_b == 0)
    for blk in w.blocks:
        assert np.all(blk.ln_1_g == 1) and np.all(blk.ln_2_g == 1)
        assert np.all(blk.attn_b == 0) and np.all(blk.fc_proj_b == 0)
        assert abs(blk.fc_w.std() - 0.02) < 0.002
        assert abs(blk.fc_proj_w.std() - 0.02 / np.sqrt(2 * cfg.n_layer)) < 0.001
    assert abs(w.wte.std() - 0.02) < 0.002


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = load_gpt2(write_dummy_checkpoint(tmp_path / "a", seed=7, **TINY))[1]
    b = load_gpt2(write_dummy_checkpoint(tmp_path / "b", seed=7, **TINY))[1]
    c = load_gpt2(write_dummy_checkpoint(tmp_path / "c", seed=8, **TINY))[1]
    np.testing.assert_array_equal(a.wte, b.wte)
    np.testing.assert_array_equal(a.blocks[0].attn_w, b.blocks[0].attn_w)
    assert not np.array_equal(a.wte, c.wte)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOVLLM_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("NANOVLLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "nanovllm"


# --- tokenizers -----------------------------------------------------------------------------------

def test_trained_tokenizer_covers_the_whole_vocab(tiny_ckpt):
    assert_tokenizer_covers_vocab(tiny_ckpt, config_json(tiny_ckpt)["vocab_size"])


def test_trained_tokenizer_round_trips_text(tiny_ckpt):
    tok = Tokenizer.from_file(str(tiny_ckpt / "tokenizer.json"))
    text = "def f(x):\n    return x ** 2  # héllo, 世界 🙂" + EOT
    ids = tok.encode(text).ids
    assert ids[-1] == 1023 and max(ids) < 1024
    assert tok.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("cls", [AutoTokenizer, GPT2TokenizerFast])
def test_transformers_loads_the_tokenizer(tiny_ckpt, cls):
    tok = cls.from_pretrained(tiny_ckpt)
    assert len(tok) == 1024
    assert tok.eos_token == EOT and tok.eos_token_id == 1023
    text = "import numpy as np\nprint(np.pi)"
    ids = tok.encode(text)
    assert ids == Tokenizer.from_file(str(tiny_ckpt / "tokenizer.json")).encode(text).ids
    assert tok.decode(ids) == text


def test_tokenizer_too_small_for_byte_level_bpe(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOVLLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        write_dummy_checkpoint(tmp_path / "ckpt", **{**TINY, "vocab_size": 100})


def test_tokenizer_dir_with_another_vocab_size(tmp_path, tiny_ckpt):
    with pytest.raises(ValueError) as info:
        write_dummy_checkpoint(tmp_path, **{**TINY, "vocab_size": 2048}, tokenizer_dir=tiny_ckpt)
    assert str(tiny_ckpt) in str(info.value)
    assert "1024" in str(info.value) and "2048" in str(info.value)


def test_tokenizer_dir_without_tokenizer_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tokenizer.json"):
        write_dummy_checkpoint(tmp_path / "out", **TINY, tokenizer_dir=tmp_path / "empty")


def test_tokenizer_dir_is_copied(tmp_path, tiny_ckpt):
    out = write_dummy_checkpoint(tmp_path, **TINY, tokenizer_dir=tiny_ckpt)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tiny_ckpt / name).read_bytes(), name


@pytest.mark.skipif(not (REAL_GPT2_TOKENIZER / "tokenizer.json").exists(),
                    reason=f"optional data {REAL_GPT2_TOKENIZER} is absent")
def test_real_gpt2_tokenizer_is_used_when_given(tmp_path):
    out = write_dummy_checkpoint(tmp_path, "gpt2", n_layer=1, n_embd=32, n_head=2,
                                 tokenizer_dir=REAL_GPT2_TOKENIZER)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (REAL_GPT2_TOKENIZER / name).read_bytes(), name
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.encode("Hello world") == [15496, 995]
    assert len(tok) == 50257 and tok.eos_token_id == 50256 == config_json(out)["eos_token_id"]
    assert_tokenizer_covers_vocab(out, 50257)
    cfg, weights = load_gpt2(out)
    assert cfg.vocab_size == 50257 and weights.wte.shape == (50257, 32)


@pytest.mark.skipif(not (REAL_GPT2_TOKENIZER / "tokenizer.json").exists(),
                    reason=f"optional data {REAL_GPT2_TOKENIZER} is absent")
def test_real_gpt2_tokenizer_on_a_smaller_vocab_is_refused(tmp_path):
    with pytest.raises(ValueError, match="50257 tokens but the model's vocab_size is 1024"):
        write_dummy_checkpoint(tmp_path, **TINY, tokenizer_dir=REAL_GPT2_TOKENIZER)
