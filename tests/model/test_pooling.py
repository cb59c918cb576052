"""Pooling as the checkpoint says: our vectors against SentenceTransformer.encode's and our
scores against CrossEncoder.predict's, on random checkpoints sentence-transformers writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bert_checkpoints import PAIRS, TEXTS, write_hf_bert, write_st_embedder

from nanovllm.model.architectures import bert
from nanovllm.model.architectures.registry import load_checkpoint
from nanovllm.model.checkpoint.pooling_config import PoolingConfigError, read_pooling_config
from nanovllm.model.layers.pooling import activate, normalize, pool
from nanovllm.tokenizer import Tokenizer

st = pytest.importorskip("sentence_transformers")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def our_vectors(model_dir, texts) -> np.ndarray:
    cfg, weights = load_checkpoint(model_dir)
    pooling = read_pooling_config(model_dir, is_encoder=True)
    tok = Tokenizer(model_dir, None)
    ids = [tok.encode(t) for t in texts]
    starts = np.cumsum([0, *map(len, ids)])
    flat = np.concatenate(ids)
    positions = np.concatenate([np.arange(len(i)) for i in ids])
    hidden = bert.encode(weights, cfg, flat, positions, np.zeros_like(flat), starts)
    vectors = pool(hidden, starts, pooling.modes)
    return normalize(vectors) if pooling.normalize else vectors


@pytest.mark.parametrize("mode,norm", [("mean", True), ("cls", True), ("lasttoken", False),
                                       ("max", False), ("mean_sqrt_len_tokens", True)])
def test_embeddings_equal_sentence_transformers(tmp_path, mode, norm):
    model_dir = write_st_embedder(tmp_path / "st", pooling=mode, normalize=norm)
    pooling = read_pooling_config(model_dir, is_encoder=True)
    assert pooling.modes == (mode,) and pooling.normalize == norm
    want = st.SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS)
    got = our_vectors(model_dir, TEXTS)
    assert got.shape == want.shape
    assert cosines(got, want).min() >= 0.99999
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_legacy_pooling_keys_are_read(tmp_path):
    model_dir = write_st_embedder(tmp_path / "st", pooling="cls")
    legacy = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
              "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(legacy))
    assert read_pooling_config(model_dir, is_encoder=True).modes == ("mean",)


def test_an_unknown_module_is_refused_by_name(tmp_path):
    model_dir = write_st_embedder(tmp_path / "st")
    modules = json.loads((model_dir / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense",
                    "type": "sentence_transformers.models.Dense"})
    (model_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(PoolingConfigError, match="Dense"):
        read_pooling_config(model_dir, is_encoder=True)


def test_without_modules_json_encoders_pool_cls_and_decoders_the_last_token(tmp_path):
    model_dir = write_hf_bert(tmp_path / "hf")
    assert read_pooling_config(model_dir, is_encoder=True).modes == ("cls",)
    assert read_pooling_config(model_dir, is_encoder=False).modes == ("lasttoken",)


@pytest.mark.parametrize("labels", [1, 3])
def test_scores_equal_cross_encoder_predict(tmp_path, labels):
    model_dir = write_hf_bert(tmp_path / "ce", classifier_labels=labels, seed=2)
    want = st.CrossEncoder(str(model_dir), device="cpu").predict(PAIRS)
    cfg, weights = load_checkpoint(model_dir)
    pooling = read_pooling_config(model_dir, is_encoder=True, num_labels=cfg.num_labels)
    tok = Tokenizer(model_dir, None)
    pairs = [tok.encode_pair(a, b) for a, b in PAIRS]
    starts = np.cumsum([0, *(len(i) for i, _ in pairs)])
    flat = np.concatenate([i for i, _ in pairs])
    positions = np.concatenate([np.arange(len(i)) for i, _ in pairs])
    hidden = bert.encode(weights, cfg, flat, positions,
                         np.concatenate([t for _, t in pairs]), starts)
    got = activate(bert.classify(weights, hidden, starts), pooling.activation)
    np.testing.assert_allclose(got.squeeze(-1) if labels == 1 else got, want, atol=1e-5)


@pytest.mark.parametrize("preset,mode", [("all-minilm-l6-v2", "mean"), ("bge-small-en-v1.5", "cls"),
                                         ("ms-marco-minilm-l6-v2", None)])
def test_dummy_presets_load_here_and_in_sentence_transformers(tmp_path, preset, mode):
    from nanovllm.model.checkpoint.dummy import write_dummy_checkpoint

    model_dir = write_dummy_checkpoint(tmp_path / preset, preset, num_hidden_layers=1)
    cfg, _ = load_checkpoint(model_dir)
    assert cfg.hidden_size == 384 and cfg.vocab_size == 30522
    ids = Tokenizer(model_dir, None).encode("Hello, world!")
    assert ids[0] == 101 and ids[-1] == 102 and 100 not in ids  # [CLS] ... [SEP], no [UNK]
    if mode is None:
        assert cfg.num_labels == 1
        assert read_pooling_config(model_dir, True, cfg.num_labels).activation == "sigmoid"
        st.CrossEncoder(str(model_dir), device="cpu").predict([("a", "b")])
    else:
        assert read_pooling_config(model_dir, is_encoder=True).modes == (mode,)
        want = st.SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS)
        assert cosines(our_vectors(model_dir, TEXTS), want).min() >= 0.99999
