"""What every architecture's config reads the same way from a Hugging Face checkpoint:
config.json (with generation_config.json's end-of-sequence ids), token-id fields and the
rotary scaling block."""

from __future__ import annotations

import json
from pathlib import Path

# What model/layers/rotary.py implements; "freq_factors" is Llama 3's scaling as a GGUF
# stores it.
ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")


def read_config(path: str | Path, generation_eos: bool = False) -> dict:
    """config.json as a dict. With `generation_eos`, the eos_token_id (an id or a list) of the
    generation_config.json beside it wins if it has one: it is what ends generation in
    transformers and vLLM."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        generation = path.parent / "generation_config.json"
        eos = (json.loads(generation.read_text()).get("eos_token_id")
               if generation_eos and generation.exists() else None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: cannot read config: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return {**d, "eos_token_id": eos} if eos is not None else d


def given(d: dict, names) -> dict:
    """The fields of `names` that config.json sets (null counts as not set)."""
    return {name: d[name] for name in names if d.get(name) is not None}


def build(cls, fields: dict, source: str):
    """`cls(**fields)`, its refusal naming the file it came from."""
    try:
        return cls(**fields)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def token_ids(value, name: str) -> tuple[int, ...]:
    """An id or a list of ids (generation_config.json's eos_token_id may be either)."""
    if value is None:
        return ()
    ids = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, list) else None
    if ids is None or not all(type(i) is int and i >= 0 for i in ids):
        raise ValueError(f"{name} must be a non-negative integer or a list of them, got {value!r}")
    return ids


def rope_scaling(scaling: dict | None) -> dict | None:
    """A config's rope_scaling with the "default" kind (no scaling) as None."""
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        return None
    return scaling or None


def check_rope_scaling(scaling: dict | None) -> None:
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be an object, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported; supported: "
                         f"{', '.join(ROPE_TYPES)}")
    need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                              "original_max_position_embeddings")}.get(kind, ())
    if kind == "freq_factors":
        factors = scaling.get("factors")
        if not isinstance(factors, list) or not all(
                isinstance(f, int | float) and f > 0 for f in factors):
            raise ValueError(f"rope_scaling freq_factors: factors must be a list of positive "
                             f"numbers, got {factors!r}")
    for key in need:
        if not isinstance(scaling.get(key), int | float) or scaling[key] <= 0:
            raise ValueError(f"rope_scaling {kind}: {key} must be a positive number, "
                             f"got {scaling.get(key)!r}")
