"""int8 and bfloat16 against float32 over >= 1,000 teacher-forced positions, on GPT-2's
initialisation (std 0.02), tiny and 124M-shaped (and tiny Llamas), held to the error budget that
`scripts/lab/precision_accuracy.py` derives from the weights' measured error (sigma: the predicted
RMS change of the centred logits):
- the measured RMS change is within sigma;
- max |delta logprob| of float32's greedy token is within 12 sigma (twice a 6-sigma change);
- the mean KL is within sigma**2 (about half the variance of the change);
- float32's greedy token wins wherever its lead is more than 12 sigma (not a near-tie).
int8 is W8A8, so sigma counts the activations' measured rounding too, as it does for bfloat16
where it runs on the avx512bf16 kernel (activations rounded to bfloat16). Random weights give flat
distributions that hide errors: `code-6l` (a small GPT-2 trained on Python source, in
../shared/models, or $NANOVLLM_SHARED_MODELS) is also held to the issue's bars, top-1 agreement
>= 0.98 and mean KL <= 5e-3, on Python source it reads teacher-forced.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest

from nanovllm.model import PRESETS
from nanovllm.model.architectures.gpt2_config import GPT2Config
from nanovllm.model.checkpoint.dummy import random_weights
from nanovllm.model.checkpoint.loader import read_tensors
from nanovllm.model.layers.linear import host_packs_bfloat16
from nanovllm.scripts.lab.precision_accuracy import Agreement, measure, text_windows
from tests.conftest import TINY

SHARED_MODELS = Path(os.environ.get("NANOVLLM_SHARED_MODELS",
                                    Path(__file__).resolve().parents[2].parent / "shared" / "models"))
CODE_6L = SHARED_MODELS / "code-6l"


def check(result: Agreement, min_decided: int) -> None:
    assert result.positions >= 1000
    assert 0 < result.weight_error < 0.02  # int8 ~ 0.008 and bfloat16 ~ 0.002 at std 0.02
    assert result.rms_logit_change <= result.sigma, result
    assert result.max_delta_logprob <= 12 * result.sigma, result
    assert result.mean_kl <= result.sigma ** 2, result
    assert result.decided_positions >= min_decided, result
    assert result.decided_positions == 0 or result.decided_agreement == 1.0, result


def run(cfg: GPT2Config, sequences: int, length: int) -> dict[str, Agreement]:
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size - 1, (sequences, length))
    return measure(cfg, random_weights(cfg), ids)


def test_tiny_model_within_the_error_budget():
    results = run(GPT2Config(**TINY), 5, 256)
    for result in results.values():
        check(result, min_decided=1000)  # tiny's logits are rarely near-ties
    assert results["bfloat16"].sigma < results["int8"].sigma  # 8 mantissa bits beat 7-bit steps
    # measured on the path the engine takes: activations rounded where the kernel runs
    assert (results["bfloat16"].activation_error > 0) == host_packs_bfloat16()


@pytest.mark.slow
def test_124m_model_within_the_error_budget():
    """Random 124M logits are nearly flat, so most top-two gaps are within 12 sigma of each
    other: the greedy check covers fewer positions here, none for W8A8's larger sigma (the
    budget checks cover all; code-6l's test checks int8's greedy tokens)."""
    results = run(PRESETS["gpt2"], 4, 256)
    check(results["int8"], min_decided=0)
    check(results["bfloat16"], min_decided=300)


@pytest.mark.slow
@pytest.mark.skipif(not (CODE_6L / "model.safetensors").is_file(),
                    reason=f"{CODE_6L} is absent (../shared is not part of the repository)")
def test_int8_on_a_trained_model_agrees_with_float32():
    """Teacher-forced on 1,024 tokens of Python's own argparse.py (a file every Python has)."""
    cfg = GPT2Config.from_json(CODE_6L / "config.json")
    tensors = read_tensors(CODE_6L)[0]
    tensors.pop("lm_head.weight", None)
    sequences = text_windows(CODE_6L, Path(argparse.__file__).read_text(), 4, 256)
    results = measure(cfg, tensors, sequences)
    int8 = results["int8"]
    check(int8, min_decided=10)
    assert int8.activation_error > 0
    assert int8.greedy_agreement >= 0.98 and int8.mean_kl <= 5e-3, int8
    check(results["bfloat16"], min_decided=500)


@pytest.mark.parametrize("overrides", [dict(), dict(sliding_window=12), dict(tie_word_embeddings=True)],
                         ids=["llama-gqa", "mistral-window", "tied"])
def test_tiny_llama_within_the_error_budget(overrides):
    """The same budget on the Llama family (grouped-query attention, 4 query heads reading 2
    key/value heads; Mistral's window; a tied head), transformers' initialisation (std 0.02)."""
    from nanovllm.model.architectures.llama_config import LlamaConfig
    from nanovllm.model.checkpoint.dummy import random_weights as random_llama_weights
    from tests.llama_checkpoints import LLAMA_TINY

    # (LLAMA_TINY is in transformers' names; our config calls key/value heads num_kv_heads)
    options = {{"num_key_value_heads": "num_kv_heads"}.get(k, k): v
               for k, v in LLAMA_TINY.items() if k != "initializer_range"}
    cfg = LlamaConfig(**options, **overrides)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size - 1, (5, 256))
    results = measure(cfg, random_llama_weights(cfg), ids)
    # An untied random LM head gives flatter logits than a tied one: W8A8's larger sigma leaves
    # about a fifth of the positions decided there, all of them when tied. bfloat16 on the
    # avx512bf16 kernel rounds the activations too, so its sigma (and the near-ties' margin) is
    # about sqrt(2) times the widened path's: about 70% of the positions stay decided untied.
    check(results["int8"], min_decided=200)
    check(results["bfloat16"], min_decided=800)
    assert results["bfloat16"].sigma < results["int8"].sigma
