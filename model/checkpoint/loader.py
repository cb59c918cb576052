"""Loads a Hugging Face checkpoint directory (config.json + model.safetensors, single or
sharded; F32, F16 or BF16 on disk) into a family's weights, as its declaration says
(`model/architectures/family.py`), checking every tensor against the config before anything runs.

Accepted: keys with or without the family's prefix (`transformer.`, `model.`, `bert.`); the
buffers it declares are not parameters and are ignored (GPT-2's causal masks, old rotary
`inv_freq`s); a tied LM head's copy equal to the embedding. `build_weights` is the contract
other formats load through too: HF-named tensors in, the family's weights out.

`dtype="bfloat16"` or `quantization="int8"` store every weight matrix (and a matrix embedding,
the tied LM head) that way (`model/weights/quant.py`), converted from whatever dtype the
checkpoint holds, one matrix at a time; vectors and tables stay float32.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from nanovllm.model.architectures.families import GPT2
from nanovllm.model.architectures.family import Family, Param
from nanovllm.model.checkpoint.safetensors_io import (
    CheckpointError,
    read_safetensors,
    release_pages,
)
from nanovllm.model.weights.block_quant import BlockWeight
from nanovllm.model.weights.precision import check_precision
from nanovllm.model.weights.quant import convert_matrix
from nanovllm.model.weights.stacked import join_rows


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


def read_tensors(model_dir: Path, family: Family = GPT2
                 ) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
    """Un-prefixed name -> array, and name -> the file it came from (for error messages); the
    family's buffers are not read."""
    prefix, buffers = family.prefix, re.compile(family.buffers)

    def skip(name: str) -> bool:
        return buffers.fullmatch(name.removeprefix(prefix)) is not None

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


def read_config(family: Family, model_dir: Path):
    """config.json as the family's config class reads it (a CheckpointError if it cannot)."""
    path = model_dir / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path}: missing (not a Hugging Face checkpoint directory?)")
    try:
        return family.config.from_json(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def load(family: Family, model_dir: str | Path, dtype: str = "auto",
         quantization: str | None = None):
    """(config, weights) of a checkpoint directory of `family`."""
    check_precision(dtype, quantization)
    model_dir = Path(model_dir)
    cfg = read_config(family, model_dir)
    tensors, source = read_tensors(model_dir, family)
    check_tensors(family, cfg, tensors, source, model_dir / "config.json")
    return cfg, build_weights(family, cfg, tensors, dtype, quantization)


def load_gpt2(model_dir: str | Path, dtype: str = "auto", quantization: str | None = None):
    """(GPT2Config, GPT2Weights) of a GPT-2 checkpoint directory."""
    return load(GPT2, model_dir, dtype, quantization)


def check_tensors(family: Family, cfg, tensors: dict, source: dict, config_path: Path) -> None:
    """The tensors are the ones the config implies, optional ones allowed; a tied LM head's
    copy must equal the embedding (it is dropped)."""
    head = family.tied_head if family.ties(cfg) else None
    copy = tensors.pop(head.name, None) if head else None
    want = family.shapes(cfg)
    want.update({name: shape for name, shape in family.shapes(cfg, optional=True).items()
                 if name in tensors})
    check_shapes(tensors, want, source, config_path, cfg.architecture)
    embedding = family.embeddings[head.embedding].names()[0] if head else None
    if copy is not None and not np.array_equal(copy, tensors[embedding]):
        raise CheckpointError(f"{source[head.name]}: tensor {head.name} differs from "
                              f"{embedding}, but the config ties them")


def build_weights(family: Family, cfg, tensors, dtype: str = "auto",
                  quantization: str | None = None):
    """Arranges checked, un-prefixed HF tensors (any mapping of name -> array) into the
    family's weights: fused parts concatenated as rows, Conv1D matrices turned to [out, in],
    matrices stored as `dtype` / `quantization` ask; a field whose flag is off is None, and a
    tied LM head is the embedding itself."""
    check_precision(dtype, quantization)

    def value(prefix: str, p: Param):
        if not family.present(p, cfg):
            return None
        return stored(p, [tensors[prefix + name] for name in p.names()], dtype, quantization)

    layers = [family.layer(**{f: value(family.layer_prefix.format(i=i), p)
                              for f, p in family.layer_params.items()})
              for i in range(cfg.n_layer)]
    top = {f: value("", p) for f, p in
           {**family.embeddings, **family.head, **family.untied_head(cfg)}.items()}
    if family.ties(cfg) and family.tied_head.field is not None:
        top[family.tied_head.field] = top[family.tied_head.embedding]
    return family.weights(**top, **{family.layers_field: layers})


def stored(p: Param, parts: list[np.ndarray], dtype: str, quantization: str | None):
    """One field's value from its HF tensors (see `build_weights`); the pages of tensors read
    into a new array are released (they would count twice in RSS). A GGUF file's block-quantized
    matrices come as `BlockWeight`s, [out, in] already, joined by `stacked.join_rows`."""
    if not p.matrix:
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out = np.ascontiguousarray(out, dtype=np.float32)
        return out + np.float32(p.add) if p.add else out
    if p.transpose and not any(isinstance(part, BlockWeight) for part in parts):
        turned = [np.ascontiguousarray(part.T) for part in parts]
        for part in parts:
            release_pages(part)
        parts = turned
    converted = convert_matrix(join_rows(parts), dtype, quantization)
    for part in parts:
        if part is not converted:
            release_pages(part)
    return converted
