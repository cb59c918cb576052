"""Which model a checkpoint is, from config.json's `architectures`, and that model's functions.

One `ModelFamily` per model file (`model/architectures/gpt2.py`, `model/architectures/llama.py`,
`model/architectures/qwen3.py`, `model/architectures/bert.py`): its fast forward pass and kernels,
its plain-numpy reference module, its loader and its random-weights builder. The runner and the
engine call a family's functions and never name an architecture; a checkpoint whose architecture is
not listed here is refused at load, naming it and the ones we run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from nanovllm.model.architectures import (
    bert,
    bert_reference,
    gpt2,
    gpt2_reference,
    llama,
    llama_reference,
    qwen3,
)
from nanovllm.model.architectures.bert_config import BERT_ARCHITECTURES, BertConfig
from nanovllm.model.architectures.gpt2_config import GPT2Config
from nanovllm.model.architectures.llama_config import LLAMA_ARCHITECTURES, LlamaConfig
from nanovllm.model.checkpoint import bert_loader, dummy, llama_loader, loader
from nanovllm.model.checkpoint.gguf_loader import is_gguf_checkpoint, load_gguf
from nanovllm.model.checkpoint.safetensors_io import CheckpointError
from nanovllm.model.layers.kernel_needs import KernelNeeds

ModelConfig = GPT2Config | LlamaConfig | BertConfig  # what the engine reads of each: see llama_config.py


@dataclass(frozen=True, slots=True)
class ModelFamily:
    config_class: type
    forward: Callable                # (weights, cfg, token_ids, positions, kv_caches, batch, rows)
    compile_kernels: Callable[[KernelNeeds], None]
    # The plain-numpy path (model/reference*.py). The same functions in each: forward
    # (logits), attention_weights ([n_layer, n_head, T, T]), and embed, layers, lm_head and
    # softmax, which the forward trace (model/architectures/trace.py) steps through.
    reference: ModuleType
    load: Callable                   # (model_dir, dtype, quantization) -> (cfg, weights)
    random_tensors: Callable         # (cfg, seed) -> HF-named tensors of random weights
    build_weights: Callable          # (cfg, tensors, dtype, quantization) -> weights


GPT2 = ModelFamily(GPT2Config, gpt2.forward, gpt2.compile_kernels, gpt2_reference, loader.load_gpt2,
                   dummy.random_weights, loader.build_weights)
LLAMA = ModelFamily(LlamaConfig, llama.forward, llama.compile_kernels, llama_reference,
                    llama_loader.load_llama, dummy.random_llama_weights,
                    llama_loader.build_weights)
QWEN3 = ModelFamily(LlamaConfig, qwen3.forward, qwen3.compile_kernels, llama_reference,
                    llama_loader.load_llama, dummy.random_llama_weights,
                    llama_loader.build_weights)
# An encoder: its forward pass is `bert.encode` over whole texts, with no KV cache.
BERT = ModelFamily(BertConfig, bert.encode, bert.compile_kernels, bert_reference,
                   bert_loader.load_bert, bert_loader.random_bert_weights,
                   bert_loader.build_weights)

ARCHITECTURES: dict[str, ModelFamily] = {"GPT2LMHeadModel": GPT2,
                                         **{name: LLAMA for name in LLAMA_ARCHITECTURES},
                                         "Qwen3ForCausalLM": QWEN3,
                                         **{name: BERT for name in BERT_ARCHITECTURES}}
# Old configs without `architectures` still say what they are in `model_type`.
MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "bert": "BertModel",
               **{v: k for k, v in LLAMA_ARCHITECTURES.items()}}


def family_of(cfg: ModelConfig) -> ModelFamily:
    """The family a loaded config belongs to."""
    return ARCHITECTURES[cfg.architecture]


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
    family = ARCHITECTURES[architecture_of(model_dir)]
    if family is BERT:
        return bert_loader.read_config(model_dir)
    if family is GPT2:
        try:
            return GPT2Config.from_json(model_dir / "config.json")
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    return llama_loader.read_config(model_dir)


def load_checkpoint(model_dir: str | Path, dtype: str = "auto", quantization: str | None = None):
    """(config, weights) of any supported checkpoint directory (one derived from a GGUF file
    too: `gguf_loader`)."""
    family = ARCHITECTURES[architecture_of(model_dir)]
    if is_gguf_checkpoint(model_dir):
        return load_gguf(model_dir, family, dtype, quantization)
    return family.load(model_dir, dtype, quantization)
