"""Fixtures for the engine tests: engines on the tiny checkpoint and a transformers reference.

Everything here runs on the session's `tiny_ckpt` (2 layers, n_embd 64, vocab 1024, 256
positions, random weights): a step takes milliseconds, so tests can afford many of them.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from nanovllm import LLM, EngineConfig, LLMEngine


@pytest.fixture(scope="session")
def hf_tiny(tiny_ckpt) -> GPT2LMHeadModel:
    """transformers' GPT-2 on the same checkpoint, float32, eval mode: the reference."""
    return GPT2LMHeadModel.from_pretrained(tiny_ckpt, dtype=torch.float32).eval()


# The default KV pool is 1 GiB (262,144 blocks of the tiny model) and takes seconds to
# allocate; unless a test sizes the pool itself, it gets this many blocks.
DEFAULT_TEST_BLOCKS = 256


@pytest.fixture
def make_llm(tiny_ckpt):
    """make_llm(**engine_options) -> a fresh LLM on the tiny checkpoint."""
    def make(**options) -> LLM:
        options.setdefault("num_kv_blocks", DEFAULT_TEST_BLOCKS)
        return LLM(str(tiny_ckpt), **options)
    return make


@pytest.fixture
def make_engine(tiny_ckpt):
    """make_engine(**engine_options) -> a fresh LLMEngine on the tiny checkpoint."""
    def make(**options) -> LLMEngine:
        options.setdefault("num_kv_blocks", DEFAULT_TEST_BLOCKS)
        return LLMEngine(EngineConfig(model=str(tiny_ckpt), **options))
    return make
