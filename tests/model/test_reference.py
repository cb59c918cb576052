"""`model/architectures/gpt2_reference.py`, the plain-numpy GPT-2: the engine's full pass against
it, and what it promises itself (pure, float32, causal, bounded input).

Its parity with transformers is in test_model_parity.py, the engine's paged path against it in
test_model_paged.py, each compiled kernel against its reference function in
test_kernels_vs_reference.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from nanovllm.model import forward
from nanovllm.model.architectures import gpt2_reference as ref

TOL = 1e-5  # float32 logits of the same math summed in different orders (|logits| up to ~30)


@pytest.mark.parametrize("n", [1, 4, 64, 65, 129, 256])  # around the kernel/BLAS and block cuts
@pytest.mark.parametrize("model", ["tiny_model", "perturbed_model"])
def test_engine_full_pass_matches_reference(request, model, n, record_property):
    cfg, weights = request.getfixturevalue(model)
    ids = np.random.default_rng(n).integers(0, cfg.vocab_size, n)
    expected = ref.forward(weights, cfg, ids)
    logits = forward(weights, cfg, ids, np.arange(n))
    assert logits.dtype == expected.dtype == np.float32
    assert logits.shape == expected.shape == (n, cfg.vocab_size)
    diff = float(np.abs(logits - expected).max())
    record_property("max_abs_diff", diff)
    assert diff <= TOL * max(1.0, float(np.abs(expected).max()))


def test_reference_is_pure_and_stays_float32(perturbed_model):
    cfg, weights = perturbed_model
    before = copy.deepcopy(weights)
    ids = np.array([5, 7, 5, 1000])
    ids_before = ids.copy()
    first = ref.forward(weights, cfg, ids)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(ref.forward(weights, cfg, ids), first)
    np.testing.assert_array_equal(ids, ids_before)
    for name in ("wte", "wpe", "ln_f_g", "ln_f_b"):
        np.testing.assert_array_equal(getattr(weights, name), getattr(before, name))
    for blk, blk_before in zip(weights.blocks, before.blocks):
        for name in blk.__slots__:
            np.testing.assert_array_equal(getattr(blk, name), getattr(blk_before, name))


def test_each_position_sees_only_its_past(perturbed_model):
    """Changing token 5 leaves the logits of positions 0..4 exactly as they were."""
    cfg, weights = perturbed_model
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 9)
    changed = ids.copy()
    changed[5] = (ids[5] + 1) % cfg.vocab_size
    a, b = ref.forward(weights, cfg, ids), ref.forward(weights, cfg, changed)
    np.testing.assert_array_equal(a[:5], b[:5])
    assert np.abs(a[5:] - b[5:]).min(axis=-1).max() > 0


def test_attention_weights_are_causal_distributions(perturbed_model):
    cfg, weights = perturbed_model
    probs = ref.attention_weights(weights, cfg, np.arange(30))
    assert probs.shape == (cfg.n_layer, cfg.n_head, 30, 30) and probs.dtype == np.float32
    assert (np.triu(probs, k=1) == 0).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-6)
    assert (probs[:, :, 0, 0] == 1).all()  # the first token can only look at itself


@pytest.mark.parametrize("ids", [[], [[1, 2]], list(range(257))])  # empty, 2-D, > n_positions
def test_reference_refuses_what_gpt2_cannot_take(tiny_model, ids):
    cfg, weights = tiny_model
    with pytest.raises(ValueError, match="token_ids must be 1 to 256 ids"):
        ref.forward(weights, cfg, np.array(ids, dtype=np.int64))
