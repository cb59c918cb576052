"""Fixtures for the model tests: the tiny checkpoint's tensors, a variant with random biases and
layer norms, and a writer for variant checkpoints.

Variant checkpoints (other key layouts, shards, dtypes, broken files) are built from the tensors of
the session's `tiny_ckpt`, so every variant that loads must give exactly the tiny model back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from nanovllm.model import load_gpt2


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """(config, weights) of the tiny checkpoint."""
    return load_gpt2(tiny_ckpt)


@pytest.fixture(scope="session")
def perturbed_ckpt(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint with random biases and layer-norm parameters, and larger weights.

    Dummy checkpoints have zero biases and unit layer-norm gains: without this variant a dropped
    or mis-wired bias would go unnoticed. The embedding (also the LM head) is scaled up so that
    logits reach real GPT-2's magnitude (tens), where float32 rounding starts to matter.
    """
    rng = np.random.default_rng(1)
    tensors = load_file(str(tiny_ckpt / "model.safetensors"))
    for name, t in tensors.items():
        noise = rng.standard_normal(t.shape, dtype=np.float32)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            tensors[name] = 1 + 0.2 * noise
        elif name.endswith(".bias"):
            tensors[name] = 0.1 * noise
        elif name == "wte.weight":
            tensors[name] = 20 * t
        else:
            tensors[name] = 3 * t
    out = tmp_path_factory.mktemp("perturbed")
    (out / "config.json").write_bytes((tiny_ckpt / "config.json").read_bytes())
    save_file(tensors, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="session")
def perturbed_model(perturbed_ckpt):
    """(config, weights) of the perturbed checkpoint."""
    return load_gpt2(perturbed_ckpt)


@pytest.fixture
def tiny_tensors(tiny_ckpt) -> dict[str, np.ndarray]:
    """The tiny checkpoint's tensors by their stored (un-prefixed) names; a fresh copy per test."""
    return load_file(str(tiny_ckpt / "model.safetensors"))


@pytest.fixture
def tiny_config(tiny_ckpt) -> dict:
    return json.loads((tiny_ckpt / "config.json").read_text())


WriteCheckpoint = Callable[..., Path]


@pytest.fixture
def write_checkpoint(tmp_path, tiny_ckpt) -> WriteCheckpoint:
    """write_checkpoint(tensors, name=..., config=None, shards=None) -> checkpoint directory.

    `tensors` go to model.safetensors, or with `shards=k` to k files plus an index;
    `config` (a dict) replaces the tiny config.json. Tensors may be numpy arrays or torch tensors
    (torch ones are saved with safetensors.torch, which also writes BF16).
    """
    def write(tensors: dict, name: str = "variant", config: dict | None = None,
              shards: int | None = None) -> Path:
        out = tmp_path / name
        out.mkdir()
        if config is None:
            shutil.copyfile(tiny_ckpt / "config.json", out / "config.json")
        else:
            (out / "config.json").write_text(json.dumps(config))
        if shards is None:
            _save(tensors, out / "model.safetensors")
            return out
        names = list(tensors)
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[i::shards]}
            _save(part, out / file)
            weight_map.update(dict.fromkeys(part, file))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index))
        return out

    return write


def _save(tensors: dict, path: Path) -> None:
    if any(not isinstance(t, np.ndarray) for t in tensors.values()):
        import torch
        from safetensors.torch import save_file as save_torch

        save_torch({k: t if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t))
                    for k, t in tensors.items()}, str(path))
    else:
        save_file({k: np.ascontiguousarray(t) for k, t in tensors.items()}, str(path))
