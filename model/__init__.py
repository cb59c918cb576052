"""GPT-2 in numpy: config, weights loader, forward pass, and checkpoints we write ourselves."""

import nanovllm.model.threads  # noqa: F401  (first: it sets up the thread pools before numpy loads)

# isort: split
from nanovllm.model.attention import AttentionBatch, softmax_
from nanovllm.model.config import PRESETS, GPT2Config
from nanovllm.model.dummy import cache_root, is_dummy_checkpoint, write_dummy_checkpoint
from nanovllm.model.gpt2 import GPT2Weights, forward
from nanovllm.model.loader import load_gpt2
from nanovllm.model.safetensors_io import CheckpointError

__all__ = ["AttentionBatch", "CheckpointError", "GPT2Config", "GPT2Weights", "PRESETS",
           "cache_root", "forward", "is_dummy_checkpoint", "load_gpt2", "softmax_",
           "write_dummy_checkpoint"]
