"""Which model a checkpoint is, from config.json's `architectures`, and loading it.

`families.py` maps each architecture to its family's declaration: its forward pass and kernels,
its plain-numpy reference, the tensors its checkpoints hold. The runner and the engine call a
family's functions and never name an architecture; a checkpoint whose architecture is not listed
there is refused at load, naming it and the ones we run.
"""

from __future__ import annotations

import json
from pathlib import Path

from nanovllm.model.architectures.bert_config import BertConfig
from nanovllm.model.architectures.families import ARCHITECTURES, MODEL_TYPES, family_of
from nanovllm.model.architectures.gpt2_config import GPT2Config
from nanovllm.model.architectures.llama_config import LlamaConfig
from nanovllm.model.checkpoint import loader
from nanovllm.model.checkpoint.gguf_loader import is_gguf_checkpoint, load_gguf
from nanovllm.model.checkpoint.safetensors_io import CheckpointError

ModelConfig = GPT2Config | LlamaConfig | BertConfig  # what the engine reads of each: see llama_config.py
__all__ = ["ARCHITECTURES", "MODEL_TYPES", "ModelConfig", "architecture_of", "family_of",
           "load_checkpoint", "read_config"]


def architecture_of(model_dir: str | Path) -> str:
    """config.json's architecture, refused with a CheckpointError unless we run it."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{config_path}: missing (not a Hugging Face checkpoint directory?)")
    try:
        d = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: cannot read config: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    names = d.get("architectures") or [MODEL_TYPES.get(d.get("model_type", "gpt2"),
                                                       d.get("model_type"))]
    name = names[0] if isinstance(names, list) and names else names
    if name not in ARCHITECTURES:
        raise CheckpointError(f"{config_path}: architecture {name!r} is not supported; "
                              f"supported: {', '.join(ARCHITECTURES)}")
    return name


def read_config(model_dir: str | Path) -> ModelConfig:
    """The config of a checkpoint directory, of its architecture's class."""
    model_dir = Path(model_dir)
    return loader.read_config(ARCHITECTURES[architecture_of(model_dir)], model_dir)


def load_checkpoint(model_dir: str | Path, dtype: str = "auto", quantization: str | None = None):
    """(config, weights) of any supported checkpoint directory (one derived from a GGUF file
    too: `gguf_loader`)."""
    family = ARCHITECTURES[architecture_of(model_dir)]
    if is_gguf_checkpoint(model_dir):
        return load_gguf(model_dir, family, dtype, quantization)
    return loader.load(family, model_dir, dtype, quantization)
