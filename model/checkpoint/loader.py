"""Loads a Hugging Face GPT-2 checkpoint directory (config.json + model.safetensors, single or
sharded) into `GPT2Weights`, checking every tensor against the config before anything runs.

Accepted: keys with or without the `transformer.` prefix; the causal-mask buffers
`h.N.attn.bias` / `h.N.attn.masked_bias` (ignored: they are not parameters, unlike
`c_attn.bias`); an `lm_head.weight` equal to `wte.weight` (GPT-2 ties them).

`dtype="bfloat16"` or `quantization="int8"` store every weight matrix and the token embedding
(the tied LM head) that way (`model/weights/quant.py`), converted from whatever dtype the checkpoint
holds, one matrix at a time; biases, layer norms and the position embedding stay float32.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from nanovllm.model.architectures.gpt2 import BlockWeights, GPT2Weights
from nanovllm.model.architectures.gpt2_config import GPT2Config
from nanovllm.model.checkpoint.safetensors_io import (
    CheckpointError,
    read_safetensors,
    release_pages,
)
from nanovllm.model.weights.block_quant import BlockWeight
from nanovllm.model.weights.precision import check_precision
from nanovllm.model.weights.quant import convert_matrix

MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")

# BlockWeights field -> (HF name suffix, shape as a function of n_embd)
BLOCK_TENSORS = {
    "ln_1_g": ("ln_1.weight", lambda e: (e,)), "ln_1_b": ("ln_1.bias", lambda e: (e,)),
    "attn_w": ("attn.c_attn.weight", lambda e: (e, 3 * e)),
    "attn_b": ("attn.c_attn.bias", lambda e: (3 * e,)),
    "attn_proj_w": ("attn.c_proj.weight", lambda e: (e, e)),
    "attn_proj_b": ("attn.c_proj.bias", lambda e: (e,)),
    "ln_2_g": ("ln_2.weight", lambda e: (e,)), "ln_2_b": ("ln_2.bias", lambda e: (e,)),
    "fc_w": ("mlp.c_fc.weight", lambda e: (e, 4 * e)), "fc_b": ("mlp.c_fc.bias", lambda e: (4 * e,)),
    "fc_proj_w": ("mlp.c_proj.weight", lambda e: (4 * e, e)),
    "fc_proj_b": ("mlp.c_proj.bias", lambda e: (e,)),
}


def is_mask_buffer(name: str) -> bool:
    return MASK_BUFFER.fullmatch(name.removeprefix("transformer.")) is not None


def expected_shapes(cfg: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor a GPT-2 of this config has, by its un-prefixed HF name."""
    e = cfg.n_embd
    shapes = {"wte.weight": (cfg.vocab_size, e), "wpe.weight": (cfg.n_positions, e),
              "ln_f.weight": (e,), "ln_f.bias": (e,)}
    for i in range(cfg.n_layer):
        for suffix, shape in BLOCK_TENSORS.values():
            shapes[f"h.{i}.{suffix}"] = shape(e)
    return shapes


def _weight_files(model_dir: Path) -> list[Path]:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: corrupt shard index ({e})") from e
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_tensors(model_dir: Path, prefix: str = "transformer.", skip=is_mask_buffer
                 ) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """Un-prefixed name -> array, and name -> the file it came from (for error messages)."""
    tensors, source = {}, {}
    for path in _weight_files(model_dir):
        if not path.exists():
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        for name, arr in read_safetensors(path, skip=skip).items():
            name = name.removeprefix(prefix)
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {name} also appears in {source[name]}")
            tensors[name], source[name] = arr, path
    return tensors, source


def check_shapes(tensors: dict, want: dict, source: dict, config_path: Path, model: str) -> None:
    """Every tensor `want`s names is there with its shape, and nothing else is (`source`: the file
    each came from; `model` names the architecture in the message). Shared by every loader."""
    for name, shape in want.items():
        if name not in tensors:
            files = ", ".join(sorted({str(p) for p in source.values()}))
            raise CheckpointError(f"{files}: missing tensor {name} (expected by {config_path})")
        if tensors[name].shape != shape:
            raise CheckpointError(f"{source[name]}: tensor {name} has shape {tensors[name].shape}, "
                                  f"but {config_path} implies {shape}")
    for name in tensors:
        if name not in want:
            raise CheckpointError(f"{source[name]}: unexpected tensor {name} "
                                  f"(not part of a {model} with the shapes in {config_path})")


def _check(cfg: GPT2Config, tensors: dict, source: dict, config_path: Path) -> None:
    lm_head = tensors.pop("lm_head.weight", None)
    check_shapes(tensors, expected_shapes(cfg), source, config_path, "GPT-2")
    if lm_head is not None and not np.array_equal(lm_head, tensors["wte.weight"]):
        raise CheckpointError(f"{source['lm_head.weight']}: tensor lm_head.weight differs from "
                              "wte.weight; only GPT-2's tied LM head is supported")


def load_gpt2(model_dir: str | Path, dtype: str = "auto",
              quantization: str | None = None) -> tuple[GPT2Config, GPT2Weights]:
    check_precision(dtype, quantization)
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{config_path}: missing (not a Hugging Face checkpoint directory?)")
    try:
        cfg = GPT2Config.from_json(config_path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    tensors, source = read_tensors(model_dir)
    _check(cfg, tensors, source, config_path)
    return cfg, build_weights(cfg, tensors, dtype, quantization)


def build_weights(cfg: GPT2Config, tensors: dict[str, np.ndarray], dtype: str = "auto",
                  quantization: str | None = None) -> GPT2Weights:
    """Arranges checked, un-prefixed HF tensors into the model's weight structure, with weight
    matrices turned from Conv1D's [in, out] into the [out, in] layout `linear` reads, stored as
    `dtype` / `quantization` ask (see `model/weights/quant.py`)."""
    check_precision(dtype, quantization)

    def matrix(tensor: np.ndarray):
        converted = convert_matrix(tensor, dtype, quantization)
        if converted is not tensor:
            release_pages(tensor)  # converted once; only the new copy stays resident
        return converted

    blocks = [BlockWeights(**{field: _layout(tensors[f"h.{i}.{suffix}"], matrix)
                              for field, (suffix, _) in BLOCK_TENSORS.items()})
              for i in range(cfg.n_layer)]
    return GPT2Weights(wte=matrix(tensors["wte.weight"]), wpe=tensors["wpe.weight"],
                       blocks=blocks, ln_f_g=tensors["ln_f.weight"], ln_f_b=tensors["ln_f.bias"])


def _layout(tensor: np.ndarray | BlockWeight, convert) -> np.ndarray:
    """A block's matrices (its only 2-D tensors) transposed to [out, in] and converted;
    vectors as they are. A block-quantized matrix (a GGUF file's) is [out, in] already."""
    if isinstance(tensor, BlockWeight):
        return convert(tensor)
    if tensor.ndim != 2:
        return tensor
    transposed = np.ascontiguousarray(tensor.T)
    release_pages(tensor)  # read once; only the transposed copy stays resident
    return convert(transposed)
