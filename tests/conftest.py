"""Shared fixtures: checkpoints the project writes itself (the hub is unreachable in CI)."""

from __future__ import annotations

import pytest

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
