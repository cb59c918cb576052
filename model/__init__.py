"""The models in numpy, in rooms by role, each importing only the rooms below it:
platform/ (CPU, thread pools) < weights/ (in-memory formats) < kernels/ (compiled) < layers/ <
architectures/ (one composition, config and plain reference per family) < checkpoint/ (files on
disk) < architectures/registry.py (which family a checkpoint is). Read
`architectures/gpt2_reference.py` first: GPT-2 as a few pure numpy functions.

The names below load on first use (PEP 562), after `configure_thread_pools()` (see
`platform/threads.py`), so importing the package has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from nanovllm.model.platform.threads import configure_thread_pools

_EXPORTS = {
    "AttentionBatch": "nanovllm.model.layers.attention",
    "softmax_": "nanovllm.model.kernels.shared",
    "GPT2Config": "nanovllm.model.architectures.gpt2_config",
    "PRESETS": "nanovllm.model.architectures.gpt2_config",
    "GPT2Weights": "nanovllm.model.architectures.gpt2",
    "forward": "nanovllm.model.architectures.gpt2",
    "cache_root": "nanovllm.model.checkpoint.dummy",
    "is_dummy_checkpoint": "nanovllm.model.checkpoint.dummy",
    "write_dummy_checkpoint": "nanovllm.model.checkpoint.dummy",
    "load_gpt2": "nanovllm.model.checkpoint.loader",
    "CheckpointError": "nanovllm.model.checkpoint.safetensors_io",
}
__all__ = ["AttentionBatch", "CheckpointError", "GPT2Config", "GPT2Weights", "PRESETS",
           "cache_root", "forward", "is_dummy_checkpoint", "load_gpt2", "softmax_",
           "write_dummy_checkpoint"]

if TYPE_CHECKING:
    from nanovllm.model.architectures.gpt2 import GPT2Weights, forward
    from nanovllm.model.architectures.gpt2_config import PRESETS, GPT2Config
    from nanovllm.model.checkpoint.dummy import (
        cache_root,
        is_dummy_checkpoint,
        write_dummy_checkpoint,
    )
    from nanovllm.model.checkpoint.loader import load_gpt2
    from nanovllm.model.checkpoint.safetensors_io import CheckpointError
    from nanovllm.model.kernels.shared import softmax_
    from nanovllm.model.layers.attention import AttentionBatch


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nanovllm.model' has no attribute {name!r}")
    configure_thread_pools()  # before numpy loads: see model/platform/threads.py
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
