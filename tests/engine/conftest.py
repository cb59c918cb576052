"""Fixtures for the engine tests: a transformers reference on the tiny checkpoint (make_engine
and make_llm, shared with tests/runner, are in tests/conftest.py).

Everything here runs on the session's `tiny_ckpt` (2 layers, n_embd 64, vocab 1024, 256
positions, random weights): a step takes milliseconds, so tests can afford many of them.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel


@pytest.fixture(scope="session")
def hf_tiny(tiny_ckpt) -> GPT2LMHeadModel:
    """transformers' GPT-2 on the same checkpoint, float32, eval mode: the reference."""
    return GPT2LMHeadModel.from_pretrained(tiny_ckpt, dtype=torch.float32).eval()
