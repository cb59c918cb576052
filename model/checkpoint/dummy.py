"""Checkpoints we make ourselves: random weights in the exact Hugging Face layout, for GPT-2's
presets, the Llama family's (`LLAMA_PRESETS`: SmolLM2, TinyLlama, Llama 3.2, Qwen2.5, Mistral)
and BERT encoders' (`BERT_PRESETS`: all-MiniLM-L6-v2, bge-small-en-v1.5, the ms-marco
cross-encoder), each of those with sentence-transformers' pooling files as the real one has.

The hub is out of reach in CI and on offline machines, so the project writes a complete,
loadable checkpoint directory (config, generation config, safetensors weights, tokenizer) for any
preset or a tiny test size. Random weights with the real shapes cost exactly what the real model
costs, which is what benchmarks and smoke runs need. This is vLLM's `load_format="dummy"`.
Such a config carries `"_nanovllm_dummy": true` so everything downstream can label it.
`dummy_checkpoint_dir` keeps one such checkpoint per preset in a cache, written on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from nanovllm.model.architectures.bert_config import BERT_PRESETS, BertConfig
from nanovllm.model.architectures.gpt2_config import PRESETS, GPT2Config
from nanovllm.model.architectures.llama_config import LLAMA_PRESETS, LlamaConfig
from nanovllm.model.checkpoint import llama_loader
from nanovllm.model.checkpoint.bert_loader import random_bert_weights
from nanovllm.model.checkpoint.loader import expected_shapes
from nanovllm.model.checkpoint.tokenizer_files import (
    copy_tokenizer,
    write_llama_tokenizer,
    write_tokenizer,
)
from nanovllm.model.checkpoint.wordpiece import write_wordpiece_tokenizer

ALL_PRESETS = (*PRESETS, *LLAMA_PRESETS, *BERT_PRESETS)  # the names `--load-format dummy` knows

DUMMY_KEY = "_nanovllm_dummy"
DUMMY_FORMAT_VERSION = 3  # bump when the files written change: cached checkpoints are rewritten


def cache_root() -> Path:
    """Where generated artefacts (trained tokenizers, dummy checkpoints) are kept between runs."""
    if os.environ.get("NANOVLLM_CACHE"):
        return Path(os.environ["NANOVLLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nanovllm"


def random_weights(cfg: GPT2Config, seed: int = 0) -> dict[str, np.ndarray]:
    """GPT-2's own initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
    rng = np.random.default_rng(seed)
    resid_std = 0.02 / (2 * cfg.n_layer) ** 0.5
    tensors = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            tensors[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            tensors[name] = np.zeros(shape, np.float32)
        else:
            std = resid_std if name.endswith("c_proj.weight") else 0.02
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return tensors


def random_llama_weights(cfg: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """transformers' initialisation of a Llama: N(0, 0.02) matrices, unit norms, zero biases."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in llama_loader.expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            tensors[name] = np.zeros(shape, np.float32)
        else:
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return tensors


def write_dummy_checkpoint(out_dir: str | Path, preset: str = "gpt2", *,
                           tokenizer_dir: str | Path | None = None, seed: int = 0,
                           **config_overrides) -> Path:
    """Writes a loadable checkpoint with random weights; returns its directory.

    `preset` is one of PRESETS; `config_overrides` (e.g. n_layer=2, n_embd=64, n_head=4,
    vocab_size=1024) make tiny test models. The tokenizer is GPT-2's own, cut to `vocab_size`
    (see tokenizer_files), or copied from `tokenizer_dir`.
    """
    if preset in LLAMA_PRESETS:
        return write_dummy_llama(out_dir, preset, tokenizer_dir, seed, **config_overrides)
    if preset in BERT_PRESETS:
        return write_dummy_bert(out_dir, preset, tokenizer_dir, seed, **config_overrides)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(ALL_PRESETS)}")
    eot = config_overrides.get("vocab_size", PRESETS[preset].vocab_size) - 1
    cfg = replace(PRESETS[preset], **{"bos_token_id": eot, "eos_token_id": eot, **config_overrides})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), out, cfg.vocab_size)
    else:
        write_tokenizer(out, cfg.vocab_size, cfg.n_positions, cache_root() / "tokenizers")
    save_file(random_weights(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {**cfg.to_hf_dict(), DUMMY_KEY: True,
              "_nanovllm_note": f"random weights with the shapes of {preset}, seed {seed}"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out


def write_dummy_llama(out_dir: str | Path, preset: str, tokenizer_dir: str | Path | None,
                      seed: int, **config_overrides) -> Path:
    """A Llama-family preset's shapes with random weights (config overrides in LlamaConfig's
    field names). The real model's tokenizer is not ours to ship: its tokenizer is Llama 3
    style (`tokenizer_files.write_llama_tokenizer`: GPT-2's vocabulary cut or padded to the
    preset's size, BOS added, a chat template), and `<|eot_id|>` and `<|endoftext|>` end a
    sequence, as Llama 3's generation_config.json lists several."""
    vocab_size = config_overrides.get("vocab_size", LLAMA_PRESETS[preset].vocab_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_positions = config_overrides.get("max_position_embeddings",
                                       LLAMA_PRESETS[preset].max_position_embeddings)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), out, vocab_size)
        special = {"bos_token_id": None, "eos_token_ids": (vocab_size - 1,)}
    else:
        ids = write_llama_tokenizer(out, vocab_size, n_positions, cache_root() / "tokenizers")
        special = {"bos_token_id": ids["<|begin_of_text|>"],
                   "eos_token_ids": (ids["<|eot_id|>"], ids["<|endoftext|>"])}
    cfg = replace(LLAMA_PRESETS[preset], **{**special, **config_overrides})
    save_file(random_llama_weights(cfg, seed), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = {**cfg.to_hf_dict(), DUMMY_KEY: True,
              "_nanovllm_note": f"random weights with the shapes of {preset}, seed {seed}"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": list(cfg.eos_token_ids)}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if preset in EMBEDDING_POOLING:
        write_pooling_files(out, *EMBEDDING_POOLING[preset], cfg.hidden_size)
    return out


# How the real embedding models pool (their 1_Pooling/config.json) and how long a text their
# sentence_bert_config.json lets through.
EMBEDDING_POOLING = {"all-minilm-l6-v2": ("mean", 256), "bge-small-en-v1.5": ("cls", 512),
                     "qwen3-embedding-0.6b": ("lasttoken", 32768)}


def write_pooling_files(out: Path, mode: str, max_seq_length: int, dimension: int) -> None:
    """sentence-transformers' files of an embedding model: modules.json (Transformer,
    Pooling, Normalize), the Pooling module's config and sentence_bert_config.json."""
    modules = [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")]
    (out / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
         for i, (kind, path) in enumerate(modules)], indent=2))
    for _, path in modules[1:]:
        (out / path).mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": dimension, "pooling_mode": mode, "include_prompt": True},
        indent=2))
    (out / "2_Normalize" / "config.json").write_text("{}")
    (out / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2))


def write_dummy_bert(out_dir: str | Path, preset: str, tokenizer_dir: str | Path | None,
                     seed: int, **config_overrides) -> Path:
    """A BERT preset's shapes with random weights and a WordPiece tokenizer
    (`wordpiece.py`); an embedding model also gets sentence-transformers' files (modules.json:
    Transformer, Pooling, Normalize), a cross-encoder its sigmoid activation."""
    cfg: BertConfig = replace(BERT_PRESETS[preset], **config_overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), out, cfg.vocab_size)
    else:
        write_wordpiece_tokenizer(out, cfg.vocab_size, cfg.max_position_embeddings)
    save_file(random_bert_weights(cfg, seed), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = {**cfg.to_hf_dict(), DUMMY_KEY: True,
              "_nanovllm_note": f"random weights with the shapes of {preset}, seed {seed}"}
    if cfg.is_classifier:
        config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if preset in EMBEDDING_POOLING:
        write_pooling_files(out, *EMBEDDING_POOLING[preset], cfg.hidden_size)
    return out


def is_dummy_checkpoint(model_dir: str | Path) -> bool:
    try:
        return bool(json.loads((Path(model_dir) / "config.json").read_text()).get(DUMMY_KEY))
    except (OSError, json.JSONDecodeError):
        return False


def dummy_checkpoint_dir(preset: str = "gpt2") -> Path:
    """A random-weights checkpoint of `preset`'s shapes, written once and reused, in
    cache_root()/dummy-v<DUMMY_FORMAT_VERSION>/<preset>.

    Written to a temporary sibling and renamed, so concurrent first calls (engine and server
    tests, say) never see half a checkpoint; whichever rename lands first wins.
    """
    if preset not in ALL_PRESETS:
        raise ValueError(f"no dummy preset {preset!r}: use one of {', '.join(ALL_PRESETS)}")
    out = cache_root() / f"dummy-v{DUMMY_FORMAT_VERSION}" / preset
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{preset}.tmp-"))
    try:
        write_dummy_checkpoint(tmp, preset)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
