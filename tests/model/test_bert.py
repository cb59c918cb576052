"""BERT: the plain reference against transformers, the engine's fast path against the
reference (every piece: GELU, attention over a batch of texts, the whole encoder, the
cross-encoder's head), and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bert_checkpoints import PAIRS, TEXTS, write_hf_bert

from nanovllm.model.architectures import bert, bert_reference
from nanovllm.model.architectures.registry import load_checkpoint
from nanovllm.model.checkpoint.safetensors_io import CheckpointError
from nanovllm.model.layers.activations import gelu_erf_
from nanovllm.model.layers.encoder_attention import encoder_attention, encoder_attention_numpy
from nanovllm.model.layers.norms import add_layer_norm
from nanovllm.tokenizer import Tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return write_hf_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    return write_hf_bert(tmp_path_factory.mktemp("bert-ce"), classifier_labels=1, seed=1)


def batch(tokenizer, texts):
    """The texts' ids laid end to end, their positions, token types and row offsets."""
    ids = [tokenizer.encode(t) for t in texts]
    starts = np.cumsum([0, *map(len, ids)])
    positions = np.concatenate([np.arange(len(i)) for i in ids])
    return np.concatenate(ids), positions, np.zeros_like(positions), starts


@pytest.mark.parametrize("rows", [40, 500])  # on the calling thread, and on numba's
def test_gelu_matches_the_reference(rows):
    x = np.random.default_rng(0).standard_normal((rows, 300)).astype(np.float32) * 4
    x[0, :6] = [0, -0.0, 30, -30, 1e-8, -9]
    # erf within 1.5e-7 (A&S 7.1.26): GELU within 0.75e-7 |x| where the tail is not 0.
    np.testing.assert_allclose(gelu_erf_(x.copy(), None), bert_reference.gelu(x), atol=5e-7,
                               rtol=1e-6)
    bias = np.random.default_rng(1).standard_normal(300).astype(np.float32)
    np.testing.assert_allclose(gelu_erf_(x - bias, bias), bert_reference.gelu(x), atol=2e-6,
                               rtol=1e-6)


def attention_per_text(qkv, n_head, starts):
    """`bert_reference`'s attention, one text at a time: [n, E]."""
    n, e = qkv.shape[0], qkv.shape[1] // 3
    q, k, v = (qkv[:, i * e:(i + 1) * e].reshape(n, n_head, e // n_head) for i in range(3))
    out = np.empty((n, n_head, e // n_head), np.float32)
    for a, b in zip(starts[:-1], starts[1:]):
        probs = bert_reference.attention_probs(q[a:b], k[a:b])
        out[a:b] = (probs @ v[a:b].transpose(1, 0, 2)).transpose(1, 0, 2)
    return out.reshape(n, e)


# Ragged batches (runs of equal lengths, 1-token texts, lengths off the kernel's tiles) and
# head dims of MiniLM (32), BERT-base (64) and ones off the tiles; the last case has enough
# work to run on numba's threads.
@pytest.mark.parametrize("lengths, n_head, head_dim", [
    ([5, 5, 5, 1, 9, 9, 3], 4, 8),
    ([1], 2, 32),
    ([1, 1, 2, 17, 128, 3], 12, 32),
    ([33, 16, 4, 1, 64], 4, 64),
    ([7, 20], 3, 24),
    ([128] * 6 + [100, 1], 12, 32),
])
def test_encoder_attention_kernel_matches_numpy_and_the_reference(lengths, n_head, head_dim):
    rng = np.random.default_rng(len(lengths) + head_dim)
    starts = np.cumsum([0, *lengths])
    qkv = rng.standard_normal((starts[-1], 3 * n_head * head_dim)).astype(np.float32) * 2
    got = encoder_attention(qkv, n_head, starts)
    np.testing.assert_allclose(got, encoder_attention_numpy(qkv, n_head, starts), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got, attention_per_text(qkv, n_head, starts), atol=1e-5, rtol=1e-5)


# The calling thread, numba's, and a head dim off the kernel's tiles.
@pytest.mark.parametrize("lengths, n_head, head_dim", [
    ([3, 17, 1], 4, 32),
    ([128] * 4, 4, 32),
    ([5, 33], 3, 24),
])
def test_encoder_attention_adds_the_projection_bias_as_it_reads(lengths, n_head, head_dim):
    rng = np.random.default_rng(5)
    starts = np.cumsum([0, *lengths])
    qkv = rng.standard_normal((starts[-1], 3 * n_head * head_dim)).astype(np.float32)
    bias = rng.standard_normal(qkv.shape[1]).astype(np.float32)
    expected = attention_per_text(qkv + bias, n_head, starts)
    np.testing.assert_allclose(encoder_attention(qkv, n_head, starts, bias), expected,
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(encoder_attention_numpy(qkv, n_head, starts, bias), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [5, 600])  # on the calling thread, and on numba's
def test_add_layer_norm_is_the_residual_add_then_the_norm(rows):
    rng = np.random.default_rng(rows)
    x, residual = (rng.standard_normal((rows, 384)).astype(np.float32) * 3 for _ in range(2))
    bias, g, b = (rng.standard_normal(384).astype(np.float32) for _ in range(3))
    expected = bert_reference.layer_norm(x + bias + residual, g, b, 1e-12)
    kept = residual.copy()
    np.testing.assert_allclose(add_layer_norm(x, bias, residual, g, b, 1e-12), expected,
                               atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(residual, kept)  # (a new array: the residual is read only)


def test_encoder_attention_of_peaked_scores():
    """Scores far apart: most probabilities underflow to exactly 0, as exp32 gives them."""
    rng = np.random.default_rng(3)
    starts = np.array([0, 40, 41])
    qkv = rng.standard_normal((41, 3 * 2 * 32)).astype(np.float32) * 30
    got = encoder_attention(qkv, 2, starts)
    np.testing.assert_allclose(got, attention_per_text(qkv, 2, starts), atol=1e-4, rtol=1e-5)


def test_reference_matches_transformers(embedder):
    cfg, weights = load_checkpoint(embedder)
    model = transformers.BertModel.from_pretrained(embedder).eval()
    tok = Tokenizer(embedder, None)
    ids, types = tok.encode_pair(*PAIRS[0])
    assert set(types) == {0, 1}
    with torch.no_grad():
        want = model(torch.tensor([ids]), token_type_ids=torch.tensor([types])).last_hidden_state
    got = bert_reference.encode(weights, cfg, np.array(ids), np.array(types))
    np.testing.assert_allclose(got, want[0].numpy(), atol=2e-5)


def test_fast_path_matches_the_reference_on_a_batch(embedder):
    cfg, weights = load_checkpoint(embedder)
    tok = Tokenizer(embedder, None)
    ids, positions, types, starts = batch(tok, TEXTS)
    got = bert.encode(weights, cfg, ids, positions, types, starts)
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        want = bert_reference.encode(weights, cfg, ids[a:b])
        np.testing.assert_allclose(got[a:b], want, atol=2e-5, err_msg=TEXTS[i])


def test_cross_encoder_head_matches_transformers(cross_encoder):
    cfg, weights = load_checkpoint(cross_encoder)
    assert cfg.is_classifier and cfg.num_labels == 1
    model = transformers.BertForSequenceClassification.from_pretrained(cross_encoder).eval()
    tok = Tokenizer(cross_encoder, None)
    pairs = [tok.encode_pair(a, b) for a, b in PAIRS]
    starts = np.cumsum([0, *(len(i) for i, _ in pairs)])
    ids = np.concatenate([i for i, _ in pairs])
    types = np.concatenate([t for _, t in pairs])
    positions = np.concatenate([np.arange(len(i)) for i, _ in pairs])
    fast = bert.classify(weights, bert.encode(weights, cfg, ids, positions, types, starts), starts)
    for (i, t), row in zip(pairs, fast):
        with torch.no_grad():
            want = model(torch.tensor([i]), token_type_ids=torch.tensor([t])).logits[0].numpy()
        ref = bert_reference.forward(weights, cfg, np.array(i), np.array(t))
        np.testing.assert_allclose(ref, want, atol=2e-5)
        np.testing.assert_allclose(row, want, atol=2e-5)


def test_attention_weights_are_bidirectional(embedder):
    cfg, weights = load_checkpoint(embedder)
    probs = bert_reference.attention_weights(weights, cfg, np.array([101, 200, 300, 102]))
    assert probs.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-6)
    assert (probs[..., 0, 1:] > 0).all()  # the first token sees the ones after it


def test_a_config_we_do_not_run_is_refused_by_name(embedder, tmp_path):
    for name in ("model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_bytes((embedder / name).read_bytes())
    config = json.loads((embedder / "config.json").read_text())
    for key, value in (("hidden_act", "relu"), ("position_embedding_type", "relative_key")):
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=key):
            load_checkpoint(tmp_path)


def test_the_forward_trace_runs_on_an_encoder(embedder):
    from nanovllm.model.architectures.trace import trace_forward

    cfg, weights = load_checkpoint(embedder)
    trace = trace_forward(weights, cfg, np.array([101, 200, 300, 102]), ref=bert_reference)
    assert trace.attention.shape == (2, 4, 4, 4) and trace.residual_norm.shape == (3, 4)
