"""Which engine pools: an encoder always does; a decoder when started with `runner="pooling"`,
or with `runner="auto"` when sentence-transformers saved it as an embedding model.
How it pools is the checkpoint's (`model/checkpoint/pooling_config.py`), the math
`model/layers/pooling.py`, the runner `runner/pooling_runner.py`."""

from __future__ import annotations

from nanovllm.model.checkpoint.pooling_config import (
    PoolingConfig,
    has_pooling_module,
    read_pooling_config,
)


def pooling_config_of(config, loaded) -> PoolingConfig | None:
    """How an engine (`EngineConfig`, `model_loading.LoadedModel`) pools, or None if it
    generates: an encoder always pools; a decoder (any causal LM: GPT-2, the Llama family)
    when started with `runner="pooling"` (vLLM's `--runner pooling`), or with `runner="auto"`
    when its directory is a sentence-transformers embedding model (as vLLM's `--runner auto`),
    so that a --models-dir serves such a checkpoint for embeddings with no option of its own."""
    from nanovllm.model.architectures.bert_config import BertConfig

    cfg, name = loaded.config, loaded.architecture
    is_encoder = isinstance(cfg, BertConfig)
    if is_encoder and config.runner == "generate":
        raise ValueError(f"runner='generate': {name} is an encoder, which makes embeddings and "
                         "scores, not text")
    if not is_encoder and (config.runner == "generate" or config.runner == "auto"
                           and not has_pooling_module(loaded.path)):
        return None
    if config.speculative_config is not None:
        raise ValueError("speculative_config: a pooling model generates no tokens to speculate")
    return read_pooling_config(loaded.path, is_encoder, getattr(cfg, "num_labels", 0))
