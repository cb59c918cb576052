"""An engine's parts, built from its config: the model and its tokenizer, the context length, the
KV cache's size in blocks, and the model runner (with speculative decoding's Speculator when
`speculative_config` asks for it, and its draft model). A pooling model (an encoder, or a
decoder with `runner="pooling"`: nanovllm/pooling.py) gets the pooling runner and no KV cache:
its blocks then only count its sequences.

The KV cache gets `kv_cache_memory_bytes` (or `num_kv_blocks` blocks). A draft model's cache
has blocks of its own, which only speculating sequences take: DRAFT_KV_SHARE of the budget (at
least one full-context sequence's worth, at most the full contexts of the sequences that may
speculate at once: disable_by_batch_size - 1), the target's the rest; with `num_kv_blocks`
both get that many.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, is_dataclass

import numpy as np

from nanovllm.config import DEFAULT_KV_CACHE_BYTES, EngineConfig, kv_cache_dtype_of
from nanovllm.model.architectures.registry import family_of
from nanovllm.model.checkpoint.pooling_config import PoolingConfig
from nanovllm.model.lora.loaded import LoadedAdapters
from nanovllm.model.weights.block_quant import BLOCK_TYPES
from nanovllm.model.weights.quant import matrix_formats
from nanovllm.model_loading import LoadedModel, load_draft, load_model
from nanovllm.pooling import pooling_config_of
from nanovllm.runner.kv_cache import kv_bytes_per_block
from nanovllm.runner.model_runner import NativeModelRunner
from nanovllm.runner.pooling_runner import PoolingRunner
from nanovllm.runner.spec_decode.draft import DraftModel
from nanovllm.runner.spec_decode.speculator import Speculator
from nanovllm.tokenizer import Tokenizer
from nanovllm.values.speculative import SpeculativeConfig

logger = logging.getLogger("nanovllm")
# A draft model's share of the KV budget: enough for the few sequences speculation pays for
# (small batches), while the target keeps nearly the whole pool for the large ones.
DRAFT_KV_SHARE = 0.125
# The start-up line's word on a float16 cache that --kv-cache-dtype auto chose
# (`config.kv_cache_dtype_of`).
AUTO_FLOAT16_NOTE = (": 'auto' under bfloat16 or block-quantized weights; --kv-cache-dtype "
                     "float32 keeps K/V exact")


@dataclass(slots=True)
class EngineParts:
    loaded: LoadedModel
    tokenizer: Tokenizer
    max_model_len: int
    num_kv_blocks: int
    runner: NativeModelRunner | PoolingRunner
    pooling: PoolingConfig | None = None  # how it pools; None: it generates


def build_parts(config: EngineConfig) -> EngineParts:
    loaded = load_model(config)
    cfg = loaded.config
    tokenizer = Tokenizer(config.tokenizer or loaded.path, cfg.eos_token_id)
    max_model_len = config.max_model_len or cfg.n_positions
    if max_model_len > cfg.n_positions:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's "
                         f"n_positions={cfg.n_positions}")
    pooling = pooling_config_of(config, loaded)
    if pooling is not None:
        if config.enable_lora:
            raise ValueError("enable_lora: LoRA adapters run on generating models only, not "
                             "with the pooling runner")
        return pooling_parts(config, loaded, tokenizer, max_model_len, pooling)
    spec = config.speculative_config
    draft = (load_draft(config, loaded, max_model_len)
             if spec is not None and spec.method == "draft_model" else None)
    cache_dtype = kv_cache_dtype_of(config.kv_cache_dtype, config.dtype, in_blocks(loaded))
    num_kv_blocks, draft_blocks = kv_blocks(config, loaded, cache_dtype), 0
    if draft is not None:
        draft_blocks = draft_kv_blocks(config, draft, spec, max_model_len, cache_dtype)
        num_kv_blocks = config.num_kv_blocks or max(1, int(
            (kv_budget(config) - draft_blocks * block_bytes(config, draft, cache_dtype))
            // block_bytes(config, loaded, cache_dtype)))
    draft_model = None if draft is None else DraftModel(
        draft.config, draft.weights, draft_blocks, config.block_size, cache_dtype)
    speculator = None if spec is None else Speculator(
        spec, max_model_len, draft_model,
        0.0 if draft is None else weight_bytes(draft.weights) / weight_bytes(loaded.weights))
    adapters = LoadedAdapters(family_of(cfg), cfg, config.max_loras, config.max_lora_rank,
                              bfloat16=config.dtype == "bfloat16") if config.enable_lora else None
    runner = NativeModelRunner(cfg, loaded.weights, num_kv_blocks, config.block_size,
                               cache_dtype, config.seed, speculator, adapters)
    logger.info("Loaded %s from %s: %s, %.1fM parameters (%d layers, d=%d, vocab %d, "
                "max_model_len %d)", loaded.architecture, loaded.path,
                "RANDOM weights (dummy checkpoint)" if loaded.is_dummy else "pretrained weights",
                cfg.num_params / 1e6, cfg.n_layer, cfg.n_embd, cfg.vocab_size, max_model_len)
    logger.info("KV cache: %d blocks of %d tokens (%d tokens, %.0f MiB, %s%s)",
                num_kv_blocks, config.block_size, num_kv_blocks * config.block_size,
                runner.kv_cache.nbytes / 2**20, runner.kv_cache.dtype,
                AUTO_FLOAT16_NOTE if config.kv_cache_dtype == "auto"
                and cache_dtype == "float16" else "")
    if spec is not None:
        off = spec.disable_by_batch_size
        logger.info("speculative decoding: %s, %s, %s%s",
                    "n-gram lookup" if draft is None else f"draft {draft.path}",
                    f"k per step up to {spec.num_speculative_tokens}, from measured acceptance"
                    " and step times" if spec.adaptive else f"k={spec.num_speculative_tokens}",
                    f"off from {off} running sequences on" if off else "never switched off",
                    "" if draft_model is None else
                    f"; KV: target {runner.kv_cache.nbytes / 2**20:.0f} MiB, draft "
                    f"{draft_model.kv_cache.nbytes / 2**20:.0f} MiB (taken only by speculating "
                    "sequences)")
    return EngineParts(loaded, tokenizer, max_model_len, num_kv_blocks, runner)


def pooling_parts(config: EngineConfig, loaded: LoadedModel, tokenizer: Tokenizer,
                  max_model_len: int, pooling: PoolingConfig) -> EngineParts:
    """A pooling model's parts: the context capped at the checkpoint's `max_seq_length`, and
    blocks enough for max_num_seqs whole sequences (they hold no K/V: nothing is allocated)."""
    if pooling.max_seq_length:
        max_model_len = min(max_model_len, pooling.max_seq_length)
    num_kv_blocks = config.num_kv_blocks or config.max_num_seqs * (
        -(-max_model_len // config.block_size))
    cfg = loaded.config
    logger.info("Loaded %s from %s: %s, %.1fM parameters (%d layers, d=%d, vocab %d, "
                "max_model_len %d); pooling: %s%s, no KV cache", loaded.architecture,
                loaded.path, "RANDOM weights (dummy checkpoint)" if loaded.is_dummy
                else "pretrained weights", cfg.num_params / 1e6, cfg.n_layer, cfg.n_embd,
                cfg.vocab_size, max_model_len, "+".join(pooling.modes),
                ", normalized" if pooling.normalize else "")
    return EngineParts(loaded, tokenizer, max_model_len, num_kv_blocks,
                       PoolingRunner(cfg, loaded.weights, pooling), pooling)


def weight_bytes(weights) -> int:
    """Bytes of a model's arrays, found through its dataclasses, lists and dicts."""
    if isinstance(weights, np.ndarray):
        return weights.nbytes
    if is_dataclass(weights):
        return sum(weight_bytes(getattr(weights, f.name)) for f in fields(weights))
    if isinstance(weights, (list, tuple)):
        return sum(weight_bytes(w) for w in weights)
    if isinstance(weights, dict):
        return sum(weight_bytes(w) for w in weights.values())
    return 0


def in_blocks(model: LoadedModel) -> bool:
    """Whether any of the model's matrices are block-quantized (GGML types)."""
    return any(kind in BLOCK_TYPES for kind in matrix_formats(model.weights))


def kv_blocks(config: EngineConfig, model: LoadedModel, cache_dtype: str,
              share: float = 1.0) -> int:
    """KV blocks of `model`'s cache in `cache_dtype`: `num_kv_blocks`, or as many as `share` of
    the memory budget pays for."""
    return config.num_kv_blocks or max(1, int(kv_budget(config) * share)
                                       // block_bytes(config, model, cache_dtype))


def draft_kv_blocks(config: EngineConfig, draft: LoadedModel, spec: SpeculativeConfig,
                    max_model_len: int, cache_dtype: str) -> int:
    """The draft's blocks: DRAFT_KV_SHARE of the budget, at least one full context; but no more
    than the sequences that may speculate at once can fill (disable_by_batch_size - 1 of them),
    so that speculation configured where it does not speculate leaves the target its pool."""
    one = -(-(max_model_len + spec.num_speculative_tokens) // config.block_size)
    blocks = max(kv_blocks(config, draft, cache_dtype, DRAFT_KV_SHARE), one)
    if spec.disable_by_batch_size is None or config.num_kv_blocks:
        return blocks
    return min(blocks, (spec.disable_by_batch_size - 1) * one)


def kv_budget(config: EngineConfig) -> int:
    return config.kv_cache_memory_bytes or DEFAULT_KV_CACHE_BYTES


def block_bytes(config: EngineConfig, model: LoadedModel, cache_dtype: str) -> int:
    return kv_bytes_per_block(model.config, config.block_size, cache_dtype)
