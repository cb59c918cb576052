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


# --------------------------------------------------------------------------- GGUF files


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory):
    """gguf_file(model, outtype="f32") -> (HF checkpoint, the GGUF llama.cpp's own converter
    wrote from it), each written once (tests/gguf_files.py). Models: "gpt2"; "llama3" (tied,
    Llama 3 rope scaling, Llama 3's pre-tokenizer), "llama" (untied, grouped-query, SmolLM's
    pre-tokenizer), "llama-256" (rows of 256 and 512 weights), "llama-spm" (a SentencePiece
    tokenizer.model), "qwen2", "qwen3" and
    "qwen3-chat" (Qwen3's chat tokens and template).
    Skips when the converter cannot be fetched from PyPI."""
    from chat_checkpoints import write_qwen3_chat
    from gguf_files import (
        convert,
        converter_dir,
        set_pre_tokenizer,
        write_hf_gpt2,
        write_hf_llama_sentencepiece,
    )

    from nanovllm.model.checkpoint.dummy import cache_root

    def hf(model):
        out = tmp_path_factory.mktemp(model)
        if model == "gpt2":
            return set_pre_tokenizer(write_hf_gpt2(out), "gpt-2"), "gpt-2"
        if model == "llama-spm":
            return write_hf_llama_sentencepiece(out), None
        if model == "qwen3-chat":
            return set_pre_tokenizer(write_qwen3_chat(tmp_path_factory), "qwen2"), "qwen2"
        if model == "llama-256":  # rows of 256 and 512 weights, for the K-quant types
            return set_pre_tokenizer(write_hf_llama(
                out, "Llama", hidden_size=256, intermediate_size=512), "llama-bpe"), "llama-bpe"
        variant, pre = {"llama3": ("llama3-tied", "llama-bpe"), "llama": ("llama-gqa", "smollm"),
                        "qwen2": ("qwen2", "qwen2"), "qwen3": ("qwen3", "qwen2")}[model]
        family, overrides = LLAMA_VARIANTS[variant]
        return set_pre_tokenizer(write_hf_llama(out, family, **overrides), pre), pre

    checkpoints, files = {}, {}

    def get(model: str, outtype: str = "f32"):
        converter = converter_dir(cache_root() / "test-tools")
        if converter is None:
            pytest.skip("llama.cpp's converter (llama-cpp-python's sdist) is not reachable")
        if model not in checkpoints:
            checkpoints[model] = hf(model)
        hf_dir, pre = checkpoints[model]
        if (model, outtype) not in files:
            out = tmp_path_factory.mktemp("gguf") / f"{model}-{outtype}.gguf"
            files[model, outtype] = convert(converter, hf_dir, out, outtype, pre)
        return hf_dir, files[model, outtype]
    return get
