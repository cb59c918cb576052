"""GPT-2 in numpy: config, weights loader, forward pass, and checkpoints we write ourselves."""

import model.threads  # noqa: F401  (first: it sets up the thread pools before numpy loads)

# isort: split
from model.attention import AttentionBatch
from model.config import PRESETS, GPT2Config
from model.dummy import cache_root, is_dummy_checkpoint, write_dummy_checkpoint
from model.gpt2 import GPT2Weights, forward
from model.loader import load_gpt2
from model.safetensors_io import CheckpointError

__all__ = ["AttentionBatch", "CheckpointError", "GPT2Config", "GPT2Weights", "PRESETS",
           "cache_root", "forward", "is_dummy_checkpoint", "load_gpt2", "write_dummy_checkpoint"]
