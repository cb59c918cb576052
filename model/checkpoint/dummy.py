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

from nanovllm.model.architectures.families import PRESET_FAMILIES, family_of
from nanovllm.model.checkpoint.tokenizer_files import (
    copy_tokenizer,
    write_llama_tokenizer,
    write_tokenizer,
)
from nanovllm.model.checkpoint.wordpiece import write_wordpiece_tokenizer

ALL_PRESETS = tuple(PRESET_FAMILIES)  # the names `--load-format dummy` knows

DUMMY_KEY = "_nanovllm_dummy"
DUMMY_FORMAT_VERSION = 3  # bump when the files written change: cached checkpoints are rewritten


def cache_root() -> Path:
    """Where generated artefacts (trained tokenizers, dummy checkpoints) are kept between runs."""
    if os.environ.get("NANOVLLM_CACHE"):
        return Path(os.environ["NANOVLLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nanovllm"


def random_weights(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named random tensors of any family's config, as its declaration initialises each
    (transformers' own initialisations: N(0, std) matrices and tables, unit or zero norms,
    zero biases), drawn in file order."""
    family = family_of(cfg)
    rng = np.random.default_rng(seed)
    dims, tensors = family.dims(cfg), {}
    for prefix, p in family.params(cfg):
        if not (family.present(p, cfg) or p.optional):
            continue
        for name, shape in zip(p.names(), p.shapes(dims)):
            if p.init in ("ones", "zeros"):
                tensors[prefix + name] = np.full(shape, p.init == "ones", np.float32)
            else:
                std = p.init(cfg) if callable(p.init) else p.init
                tensors[prefix + name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return tensors


def write_dummy_checkpoint(out_dir: str | Path, preset: str = "gpt2", *,
                           tokenizer_dir: str | Path | None = None, seed: int = 0,
                           **config_overrides) -> Path:
    """Writes a loadable checkpoint with random weights; returns its directory.

    `preset` is one of ALL_PRESETS; `config_overrides` (in the family's config field names,
    e.g. n_layer=2, n_embd=64, n_head=4, vocab_size=1024) make tiny test models. The tokenizer
    is the family's kind (`write_tokenizer_files`), or copied from `tokenizer_dir`. An embedding
    model also gets sentence-transformers' files (modules.json: Transformer, Pooling,
    Normalize), a cross-encoder its sigmoid activation.
    """
    if preset not in PRESET_FAMILIES:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(ALL_PRESETS)}")
    family = PRESET_FAMILIES[preset]
    real = family.presets[preset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sized = replace(real.config, **config_overrides)
    special = write_tokenizer_files(family.tokenizer, out, sized, tokenizer_dir)
    cfg = replace(real.config, **{**special, **config_overrides})
    save_file(random_weights(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {**cfg.to_hf_dict(), DUMMY_KEY: True, **real.config_extra,
              "_nanovllm_note": f"random weights with the shapes of {preset}, seed {seed}"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if cfg.eos_token_ids:
        eos = cfg.eos_token_ids
        generation = {"bos_token_id": cfg.bos_token_id,
                      "eos_token_id": eos[0] if len(eos) == 1 else list(eos)}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    if real.pooling:
        write_pooling_files(out, *real.pooling, cfg.n_embd)
    return out


def write_tokenizer_files(kind: str, out: Path, cfg, tokenizer_dir: str | Path | None) -> dict:
    """A dummy checkpoint's tokenizer of `kind`, or the one in `tokenizer_dir` cut to the
    vocabulary; returns the special token ids it sets in the config.

    "gpt2": GPT-2's own, cut to the vocabulary (`tokenizer_files`), `<|endoftext|>` last.
    "llama3": the real model's tokenizer is not ours to ship: GPT-2's vocabulary cut or padded
    to the size, BOS added, a chat template (`write_llama_tokenizer`); `<|eot_id|>` and
    `<|endoftext|>` end a sequence, as Llama 3's generation_config.json lists several.
    "wordpiece": BERT's (`wordpiece.py`)."""
    vocab_size, n_positions = cfg.vocab_size, cfg.n_positions
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), out, vocab_size)
        return {"gpt2": {"bos_token_id": vocab_size - 1, "eos_token_id": vocab_size - 1},
                "llama3": {"bos_token_id": None, "eos_token_ids": (vocab_size - 1,)},
                "wordpiece": {}}[kind]
    if kind == "gpt2":
        write_tokenizer(out, vocab_size, n_positions, cache_root() / "tokenizers")
        return {"bos_token_id": vocab_size - 1, "eos_token_id": vocab_size - 1}
    if kind == "wordpiece":
        write_wordpiece_tokenizer(out, vocab_size, n_positions)
        return {}
    ids = write_llama_tokenizer(out, vocab_size, n_positions, cache_root() / "tokenizers")
    return {"bos_token_id": ids["<|begin_of_text|>"],
            "eos_token_ids": (ids["<|eot_id|>"], ids["<|endoftext|>"])}


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
