"""GPT-2 in numpy: config, weights loader, forward pass, and checkpoints we write ourselves.

`reference.py` is the model as a few pure numpy functions, the one to read first; `gpt2.py` is
the engine's fast path. The names below load on first use (PEP 562), after
`configure_thread_pools()` (see `threads.py`), so importing the package has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from nanovllm.model.threads import configure_thread_pools

_EXPORTS = {
    "AttentionBatch": "nanovllm.model.attention", "softmax_": "nanovllm.model.kernels",
    "GPT2Config": "nanovllm.model.config", "PRESETS": "nanovllm.model.config",
    "cache_root": "nanovllm.model.checkpoint.dummy", "is_dummy_checkpoint": "nanovllm.model.checkpoint.dummy",
    "write_dummy_checkpoint": "nanovllm.model.checkpoint.dummy",
    "GPT2Weights": "nanovllm.model.gpt2", "forward": "nanovllm.model.gpt2",
    "load_gpt2": "nanovllm.model.checkpoint.loader",
    "CheckpointError": "nanovllm.model.checkpoint.safetensors_io",
}
__all__ = ["AttentionBatch", "CheckpointError", "GPT2Config", "GPT2Weights", "PRESETS",
           "cache_root", "forward", "is_dummy_checkpoint", "load_gpt2", "softmax_",
           "write_dummy_checkpoint"]

if TYPE_CHECKING:
    from nanovllm.model.attention import AttentionBatch
    from nanovllm.model.checkpoint.dummy import (
        cache_root,
        is_dummy_checkpoint,
        write_dummy_checkpoint,
    )
    from nanovllm.model.checkpoint.loader import load_gpt2
    from nanovllm.model.checkpoint.safetensors_io import CheckpointError
    from nanovllm.model.config import PRESETS, GPT2Config
    from nanovllm.model.gpt2 import GPT2Weights, forward
    from nanovllm.model.kernels import softmax_


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nanovllm.model' has no attribute {name!r}")
    configure_thread_pools()  # before numpy loads: see model/threads.py
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
