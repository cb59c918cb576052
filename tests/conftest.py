"""Shared fixtures: checkpoints the project writes itself (the hub is unreachable in CI)."""

from __future__ import annotations

import pytest
from llama_checkpoints import LLAMA_VARIANTS, write_hf_llama

from nanovllm import LLM, EngineConfig, LLMEngine
from nanovllm.model import write_dummy_checkpoint

TINY = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1024, n_positions=256)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A 2-layer GPT-2 with random weights and a 1,024-token trained tokenizer."""
    return write_dummy_checkpoint(tmp_path_factory.mktemp("tiny"), "gpt2", **TINY)


@pytest.fixture(scope="session")
def gpt2_ckpt(tmp_path_factory):
    """Random weights with the exact shapes of GPT-2 124M."""
    return write_dummy_checkpoint(tmp_path_factory.mktemp("gpt2"), "gpt2")


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


# --------------------------------------------------------------------------- the Llama family


@pytest.fixture(scope="session")
def llama_ckpt(tmp_path_factory):
    """llama_ckpt(variant) -> the directory of a LLAMA_VARIANTS checkpoint, written once."""
    made = {}

    def get(variant: str):
        if variant not in made:
            family, overrides = LLAMA_VARIANTS[variant]
            made[variant] = write_hf_llama(tmp_path_factory.mktemp(variant), family, **overrides)
        return made[variant]
    return get


@pytest.fixture(scope="session")
def hf_llama():
    """hf_llama(directory) -> transformers' model of a checkpoint, float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    made = {}

    def get(model_dir):
        if model_dir not in made:
            made[model_dir] = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch.float32).eval()
        return made[model_dir]
    return get
