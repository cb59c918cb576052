"""Finds and loads the model an engine serves: a local directory, a hub name, or dummy weights.

This is also the one place that decides on the dummy fallback (`allow_dummy_fallback`, the
`--allow-dummy-fallback` flag of serve, generate and bench): a preset name that cannot be
downloaded because the hub is unreachable is loaded with random weights instead, and one warning
says so. Nothing else falls back: not a directory, not another repo, not a hub that answered
with an error, not a checkpoint that does not load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from nanovllm.config import EngineConfig
from nanovllm.hub import HUB_REPOS, HubUnavailableError, resolve_model
from nanovllm.hub_gguf import download_gguf, parse_gguf_ref
from nanovllm.model import is_dummy_checkpoint
from nanovllm.model.architectures.registry import (
    ARCHITECTURES,
    ModelConfig,
    architecture_of,
    load_checkpoint,
    read_config,
)
from nanovllm.model.checkpoint.dummy import cache_root, dummy_checkpoint_dir, random_weights
from nanovllm.model.checkpoint.gguf_loader import (
    find_gguf,
    gguf_checkpoint_dir,
    is_gguf_checkpoint,
)
from nanovllm.model.checkpoint.loader import build_weights
from nanovllm.model.checkpoint.safetensors_io import release_pages
from nanovllm.model.layers.linear import host_packs_bfloat16, host_packs_float32
from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model.weights.precision import precision_name
from nanovllm.model.weights.quant import (
    matrix_formats,
    pack_bfloat16_weights,
    pack_float32_weights,
)

logger = logging.getLogger("nanovllm")


@dataclass(slots=True)
class LoadedModel:
    path: Path
    config: ModelConfig
    weights: object          # the architecture's weights (GPT2Weights, LlamaWeights)
    is_dummy: bool
    architecture: str        # config.json's, e.g. "LlamaForCausalLM"


def load_model(config: EngineConfig) -> LoadedModel:
    """The checkpoint `config.model` names, or random weights (see `_load_dummy`), its weights
    stored as `config.dtype` / `config.quantization` ask, float32 and bfloat16 matrices packed
    where this CPU's kernels read them so (`linear.host_packs_float32`, `host_packs_bfloat16`);
    logs that and the kernels' path."""
    loaded = _load_dummy(config) if config.load_format == "dummy" else _load_checkpoint(config)
    pack_for_kernels(loaded.weights, config.dtype, release_pages)
    logger.info("weights: %s; %s", stored_as(loaded, config), kernel_path().describe())
    return loaded


def stored_as(loaded: LoadedModel, config: EngineConfig) -> str:
    """What the weights are stored as: the precision asked for, or, from a GGUF file, how many
    matrices hold each of its formats ("169 Q4_K, 29 Q6_K")."""
    if not is_gguf_checkpoint(loaded.path):
        return precision_name(config.dtype, config.quantization)
    counts = sorted(matrix_formats(loaded.weights).items(), key=lambda kv: -kv[1])
    return "from the GGUF file, " + ", ".join(f"{n} {kind}" for kind, n in counts)


def pack_for_kernels(weights, dtype: str, release=lambda w: None):
    """Any model's weights, stored as `dtype` asks, with their float32 and bfloat16 matrices
    packed, in place, where this CPU's kernels read them so (`linear.host_packs_float32`,
    `host_packs_bfloat16`, which compiles the bfloat16 kernel: asked only for bfloat16), each
    replacing its `[out, in]` matrix (resident memory stays the same); `release(w)` is called
    on each float32 matrix once it is packed (to release its pages)."""
    if host_packs_float32():
        pack_float32_weights(weights, release)
    if dtype == "bfloat16" and host_packs_bfloat16():
        pack_bfloat16_weights(weights)
    return weights


def checkpoint_dir(model: str, revision: str | None = None) -> Path:
    """The checkpoint directory `model` names: a GGUF file (a path, a directory holding one, or
    `org/repo:Q4_K_M` on the hub) as the directory derived from it (`gguf_loader`), anything
    else as `resolve_model` finds it."""
    gguf = find_gguf(model)
    if gguf is None and model.endswith(".gguf"):
        raise FileNotFoundError(f"GGUF file {model} does not exist")
    if gguf is None and parse_gguf_ref(model) is not None:
        gguf = download_gguf(model, revision, log=logger.info)
    if gguf is not None:
        return gguf_checkpoint_dir(gguf, cache_root() / "gguf")
    return resolve_model(model, revision, log=logger.info)


def _load_checkpoint(config: EngineConfig) -> LoadedModel:
    try:
        path = checkpoint_dir(config.model, config.revision)
    except HubUnavailableError as exc:
        preset = preset_for(config.model)
        if not (config.allow_dummy_fallback and preset):
            raise
        logger.warning("the Hugging Face hub is unreachable, so loading a dummy %s checkpoint "
                       "with RANDOM weights (%s)", preset, exc.reason)
        path = dummy_checkpoint_dir(preset)
    else:
        if is_dummy_checkpoint(path):  # (the fallback above has said so already)
            logger.warning("%s is a checkpoint with RANDOM weights, written by nanovllm: its "
                           "text is noise", path)
    cfg, weights = load_checkpoint(path, config.dtype, config.quantization)
    return LoadedModel(path, cfg, weights, is_dummy_checkpoint(path), architecture_of(path))


def preset_for(model: str) -> str | None:
    """The preset a hub name stands for (`gpt2`, or its repo id `openai-community/gpt2`), or None:
    only presets have a dummy checkpoint of the right shapes."""
    return next((preset for preset, repo_id in HUB_REPOS.items() if model in (preset, repo_id)),
                None)


def _load_dummy(config: EngineConfig) -> LoadedModel:
    """`load_format="dummy"`: random weights with the real shapes; for a preset name a cached
    dummy checkpoint, for a directory or a GGUF file its config with random weights in
    memory."""
    gguf = find_gguf(config.model)
    path = gguf_checkpoint_dir(gguf, cache_root() / "gguf") if gguf else Path(
        config.model).expanduser()
    if not path.is_dir():
        path = dummy_checkpoint_dir(preset_for(config.model) or config.model.rsplit("/", 1)[-1])
    architecture = architecture_of(path)
    if is_dummy_checkpoint(path):
        cfg, weights = load_checkpoint(path, config.dtype, config.quantization)
    else:
        cfg = read_config(path)
        weights = build_weights(ARCHITECTURES[architecture], cfg,
                                random_weights(cfg, config.seed), config.dtype,
                                config.quantization)
    logger.warning("load_format='dummy': %s with RANDOM weights (the shapes of %s)",
                   architecture, path.name)
    return LoadedModel(path, cfg, weights, is_dummy=True, architecture=architecture)


def load_draft(config: EngineConfig, target: LoadedModel, max_model_len: int) -> LoadedModel:
    """The draft checkpoint of `speculative_config` (method "draft_model"), loaded as the target
    is (`load_format` too: a dummy target gets a dummy draft from the same seed, so the same
    directory gives the same weights) with the draft's own `quantization`. Refused at start-up,
    naming the key, if it is missing or cannot stand in for the target: another vocabulary or
    end-of-text token, or a context shorter than max_model_len."""
    spec = config.speculative_config
    key = "speculative_config.model"
    if config.load_format != "dummy" and not Path(spec.model).expanduser().is_dir() and (
            preset_for(spec.model) is None):
        raise ValueError(f"{key}: no checkpoint directory at {spec.model!r}")
    draft_config = replace(config, model=spec.model, dtype="auto", quantization=spec.quantization,
                           revision=None, speculative_config=None)
    try:
        draft = load_model(draft_config)
    except (OSError, ValueError) as e:
        raise ValueError(f"{key}: the draft {spec.model!r} does not load: {e}") from e
    cfg, want = draft.config, target.config
    if cfg.vocab_size != want.vocab_size or cfg.eos_token_ids != want.eos_token_ids:
        raise ValueError(f"{key}: the draft's vocabulary ({cfg.vocab_size} tokens, end-of-text "
                         f"{list(cfg.eos_token_ids)}) is not the target's ({want.vocab_size}, "
                         f"{list(want.eos_token_ids)}): it must use the same tokenizer")
    if cfg.n_positions < max_model_len:
        raise ValueError(f"{key}: the draft's context ({cfg.n_positions} positions) is shorter "
                         f"than max_model_len={max_model_len}")
    return draft
