"""A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) read and
checked against the base model it is to run on, before any of it is used.

Each tensor is `<module>.lora_A.weight` [r, in] or `<module>.lora_B.weight` [out, r], under
PEFT's `base_model.model.` and the base's own prefix; the module is one of the projections the
family declares (`model/architectures/families.py`: a Param part `"<module>.weight D1 D2"`),
which also says where its rows go in a fused matrix (q|k|v, gate|up) and whether the checkpoint
stores it transposed (GPT-2's Conv1D, [in, out]: PEFT's `fan_in_fan_out`). A and B are nn.Linear
weights in either case, so the low-rank product is the same; only the base's shape is read the
other way round. B is kept multiplied by PEFT's scale, lora_alpha / r (rsLoRA: / sqrt(r)); both
are kept in the base's precision family: bfloat16 beside a bfloat16 base, float32 otherwise.

What this cannot honour is refused with the adapter's name and the reason: `modules_to_save`
(whole replaced layers), DoRA, trained biases, per-module alphas, targets that are not a
projection of the layers (the embedding, the LM head), shapes that do not fit the base, and
ranks above the engine's `max_lora_rank`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanovllm.model.architectures.family import Family
from nanovllm.model.checkpoint.safetensors_io import CheckpointError, read_safetensors
from nanovllm.model.lora.math import LoRAPair
from nanovllm.model.weights.quant import to_bfloat16

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
TENSOR = re.compile(r"(?P<module>.+)\.lora_(?P<half>[AB])\.weight")


class AdapterError(ValueError):
    """An adapter that cannot run on this base; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class Projection:
    """Where one adapted module's output goes in the base's weights."""
    field: str        # the layer's weight field (qkv_w, attn_w, ...)
    cols: slice       # its rows of that (fused) matrix: its columns of the product
    shape: tuple[int, int]  # [out, in] as the engine multiplies


@dataclass(slots=True)
class LoRAAdapter:
    name: str
    id: int
    path: str
    rank: int                                      # the largest of its modules'
    layers: list[dict[str, list[LoRAPair]]]        # per layer: weight field -> its members' pairs

    @property
    def nbytes(self) -> int:
        return sum(p.a.nbytes + p.b.nbytes for layer in self.layers for pairs in layer.values()
                   for p in pairs)


def projections(family: Family, cfg) -> dict[str, Projection]:
    """Module name (relative to a layer, e.g. "self_attn.q_proj") -> where it goes, for every
    matrix part of the family's layers."""
    dims, found = family.dims(cfg), {}
    for field, param in family.layer_params.items():
        if not param.matrix or not family.present(param, cfg):
            continue
        row = 0
        for name, shape in zip(param.names(), param.shapes(dims)):
            out, inp = (shape[1], shape[0]) if param.transpose else shape
            found[name.removesuffix(".weight")] = Projection(field, slice(row, row + out),
                                                             (out, inp))
            row += out
    return found


def load_adapter(name: str, adapter_id: int, path: str | Path, family: Family, cfg,
                 max_rank: int, bfloat16: bool = False) -> LoRAAdapter:
    """The adapter at `path`, checked against the base (`family`, `cfg`), A and B in bfloat16
    if `bfloat16` (a bfloat16 base); an AdapterError naming it and the problem otherwise."""
    def fail(problem: str) -> AdapterError:
        return AdapterError(f"LoRA adapter {name!r} ({path}): {problem}")

    folder = Path(path)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / file).is_file():
            raise fail(f"{file} is missing")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        tensors = read_safetensors(folder / WEIGHTS_FILE)
    except (OSError, ValueError, CheckpointError) as e:
        raise fail(str(e)) from e
    if not isinstance(config, dict):
        raise fail(f"{CONFIG_FILE} is not a JSON object")
    refused = refusal(config)
    if refused:
        raise fail(refused)
    known = projections(family, cfg)
    check_targets(config.get("target_modules"), known, fail)
    halves = split_tensors(tensors, family, cfg, known, fail)
    layers: list[dict[str, list[LoRAPair]]] = [{} for _ in range(cfg.n_layer)]
    rank = 0
    for (layer, module), (a, b) in sorted(halves.items()):
        proj = known[module]
        r = check_pair(f"layer {layer} {module}", a, b, proj.shape, max_rank, fail)
        scale = scale_of(config, r)
        a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b * np.float32(scale),
                                                                         np.float32)
        pair = LoRAPair(to_bfloat16(a), to_bfloat16(b), proj.cols) if bfloat16 else \
            LoRAPair(a, b, proj.cols)
        layers[layer].setdefault(proj.field, []).append(pair)
        rank = max(rank, r)
    if not halves:
        raise fail(f"{WEIGHTS_FILE} holds no LoRA weights")
    return LoRAAdapter(name, adapter_id, str(path), rank, layers)


def refusal(config: dict) -> str | None:
    """Why PEFT's config asks for something this engine does not run (None: it does not)."""
    if config.get("peft_type", "LORA") != "LORA":
        return f"peft_type {config.get('peft_type')!r} is not LORA"
    if config.get("modules_to_save"):
        return (f"modules_to_save {config['modules_to_save']} replaces whole layers, which "
                "per-request adapters cannot do; merge the adapter into the model instead")
    if config.get("use_dora"):
        return "DoRA (use_dora) is not supported"
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        return "trained biases (bias / lora_bias) are not supported"
    if config.get("alpha_pattern"):
        return "per-module lora_alpha (alpha_pattern) is not supported"
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), int | float) or isinstance(config.get(key), bool) \
                or config[key] <= 0:
            return f"{key} must be a positive number, got {config.get(key)!r}"
    return None


def check_targets(targets, known: dict[str, Projection], fail) -> None:
    """A list of module names must each name projections of the layers (a regex, PEFT's other
    form, is checked through the tensors it matched)."""
    if isinstance(targets, str) or targets is None:
        return
    names = {m.rsplit(".", 1)[-1] for m in known} | set(known)
    unknown = [t for t in targets if not isinstance(t, str) or t not in names]
    if unknown:
        raise fail(f"unknown target module(s) {unknown}: this base's adaptable projections "
                   f"are {sorted(names)}")


def split_tensors(tensors: dict, family: Family, cfg, known: dict[str, Projection], fail
                  ) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """(layer, module) -> (A, B), every tensor accounted for."""
    layer_re = re.compile(re.escape(family.layer_prefix).replace(r"\{i\}", r"(\d+)"))
    halves: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).removeprefix(family.prefix)
        match, layer = TENSOR.fullmatch(name), layer_re.match(name)
        module = match["module"][layer.end():] if match and layer else None
        if module not in known or int(layer[1]) >= cfg.n_layer:
            raise fail(f"tensor {key} is not a LoRA weight of a projection of this "
                       f"{cfg.architecture} ({cfg.n_layer} layers)")
        halves.setdefault((int(layer[1]), module), {})[match["half"]] = value
    for (layer, module), pair in halves.items():
        if len(pair) != 2:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise fail(f"layer {layer} {module} has no {missing} weight")
    return {k: (v["A"], v["B"]) for k, v in halves.items()}


def check_pair(where: str, a: np.ndarray, b: np.ndarray, shape: tuple[int, int], max_rank: int,
               fail) -> int:
    """The rank of A [r, in], B [out, r] for a base [out, in]."""
    out, inp = shape
    r = a.shape[0] if a.ndim == 2 else -1
    if a.shape != (r, inp) or b.shape != (out, r):
        raise fail(f"{where}: lora_A {a.shape} and lora_B {b.shape} do not fit the base's "
                   f"[out, in] = {list(shape)} (expected [r, {inp}] and [{out}, r])")
    if r > max_rank:
        raise fail(f"{where}: rank {r} is above max_lora_rank {max_rank}")
    return r


def scale_of(config: dict, r: int) -> float:
    """PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
    alpha = float(config["lora_alpha"])
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
