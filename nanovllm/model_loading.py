"""Finds and loads the model an engine serves: a local directory, a hub name, or dummy weights."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from model import GPT2Config, GPT2Weights, is_dummy_checkpoint, load_gpt2
from model.dummy import random_weights
from model.loader import build_weights
from nanovllm.config import EngineConfig
from nanovllm.hub import dummy_checkpoint_dir, resolve_model

logger = logging.getLogger("nanovllm")


@dataclass(slots=True)
class LoadedModel:
    path: Path
    config: GPT2Config
    weights: GPT2Weights
    is_dummy: bool


def load_model(config: EngineConfig) -> LoadedModel:
    """`load_format="dummy"` gives random weights with the real shapes: for a preset name a cached
    dummy checkpoint, for a directory its config with random weights in memory."""
    if config.load_format != "dummy":
        path = resolve_model(config.model, config.revision, log=logger.info)
        cfg, weights = load_gpt2(path)
        return LoadedModel(path, cfg, weights, is_dummy_checkpoint(path))
    path = Path(config.model).expanduser()
    if not path.is_dir():
        path = dummy_checkpoint_dir(config.model.rsplit("/", 1)[-1])
    if is_dummy_checkpoint(path):
        cfg, weights = load_gpt2(path)
    else:
        cfg = GPT2Config.from_json(path / "config.json")
        weights = build_weights(cfg, random_weights(cfg, config.seed))
    return LoadedModel(path, cfg, weights, is_dummy=True)
