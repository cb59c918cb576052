"""Loads a Hugging Face BERT checkpoint directory (`BertModel`, as sentence-transformers saves
an embedding model, or `BertForSequenceClassification`, a cross-encoder) into `BertWeights`,
checking every tensor against the config before anything runs.

Keys with or without the `bert.` prefix; the `embeddings.position_ids` buffer is ignored. A
BertModel's pooler is optional (embedding never reads it); a classifier's is required.
query/key/value are fused into one matrix (rows in that order) and stored, like every weight
matrix, as `dtype` / `quantization` ask; embeddings, norms and biases stay float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanovllm.model.architectures.bert import BertWeights, LayerWeights
from nanovllm.model.architectures.bert_config import BertConfig
from nanovllm.model.checkpoint.loader import check_shapes, read_tensors
from nanovllm.model.checkpoint.safetensors_io import CheckpointError, release_pages
from nanovllm.model.weights.precision import check_precision
from nanovllm.model.weights.quant import convert_matrix

BUFFERS = ("embeddings.position_ids", "bert.embeddings.position_ids")
POOLER = ("pooler.dense.weight", "pooler.dense.bias")


def expected_shapes(cfg: BertConfig, with_pooler: bool = True) -> dict[str, tuple[int, ...]]:
    """Every parameter tensor of a model of this config, by its un-prefixed HF name."""
    e, i = cfg.hidden_size, cfg.intermediate_size
    shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, e),
              "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, e),
              "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, e),
              "embeddings.LayerNorm.weight": (e,), "embeddings.LayerNorm.bias": (e,)}
    for n in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{n}."
        for x in ("query", "key", "value"):
            shapes.update({f"{p}attention.self.{x}.weight": (e, e),
                           f"{p}attention.self.{x}.bias": (e,)})
        shapes.update({
            p + "attention.output.dense.weight": (e, e), p + "attention.output.dense.bias": (e,),
            p + "attention.output.LayerNorm.weight": (e,),
            p + "attention.output.LayerNorm.bias": (e,),
            p + "intermediate.dense.weight": (i, e), p + "intermediate.dense.bias": (i,),
            p + "output.dense.weight": (e, i), p + "output.dense.bias": (e,),
            p + "output.LayerNorm.weight": (e,), p + "output.LayerNorm.bias": (e,)})
    if with_pooler or cfg.is_classifier:
        shapes.update({POOLER[0]: (e, e), POOLER[1]: (e,)})
    if cfg.is_classifier:
        shapes.update({"classifier.weight": (cfg.num_labels, e),
                       "classifier.bias": (cfg.num_labels,)})
    return shapes


def read_config(model_dir: Path) -> BertConfig:
    try:
        return BertConfig.from_json(model_dir / "config.json")
    except ValueError as e:
        raise CheckpointError(str(e)) from e


def load_bert(model_dir: str | Path, dtype: str = "auto",
              quantization: str | None = None) -> tuple[BertConfig, BertWeights]:
    check_precision(dtype, quantization)
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    tensors, source = read_tensors(model_dir, prefix="bert.", skip=lambda n: n in BUFFERS)
    check_shapes(tensors, expected_shapes(cfg, with_pooler=POOLER[0] in tensors), source,
                 model_dir / "config.json", cfg.architecture)
    return cfg, build_weights(cfg, tensors, dtype, quantization)


def build_weights(cfg: BertConfig, tensors: dict[str, np.ndarray], dtype: str = "auto",
                  quantization: str | None = None) -> BertWeights:
    """Arranges checked, un-prefixed HF tensors into `BertWeights` (see the module's doc)."""
    check_precision(dtype, quantization)

    def matrix(*parts: np.ndarray):
        fused = np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])
        converted = convert_matrix(fused, dtype, quantization)
        for part in parts:
            if part is not converted:
                release_pages(part)
        return converted

    def vector(*names: str) -> np.ndarray:
        return np.concatenate([tensors[n] for n in names]).astype(np.float32)

    layers = []
    for n in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{n}."
        qkv = [f"{p}attention.self.{x}" for x in ("query", "key", "value")]
        layers.append(LayerWeights(
            qkv_w=matrix(*(tensors[x + ".weight"] for x in qkv)),
            qkv_b=vector(*(x + ".bias" for x in qkv)),
            o_w=matrix(tensors[p + "attention.output.dense.weight"]),
            o_b=vector(p + "attention.output.dense.bias"),
            attn_norm_g=vector(p + "attention.output.LayerNorm.weight"),
            attn_norm_b=vector(p + "attention.output.LayerNorm.bias"),
            up_w=matrix(tensors[p + "intermediate.dense.weight"]),
            up_b=vector(p + "intermediate.dense.bias"),
            down_w=matrix(tensors[p + "output.dense.weight"]),
            down_b=vector(p + "output.dense.bias"),
            out_norm_g=vector(p + "output.LayerNorm.weight"),
            out_norm_b=vector(p + "output.LayerNorm.bias")))
    head = {}
    if cfg.is_classifier:
        head = dict(pooler_w=matrix(tensors[POOLER[0]]), pooler_b=vector(POOLER[1]),
                    classifier_w=matrix(tensors["classifier.weight"]),
                    classifier_b=vector("classifier.bias"))
    return BertWeights(
        word=np.ascontiguousarray(tensors["embeddings.word_embeddings.weight"]),
        position=tensors["embeddings.position_embeddings.weight"],
        token_type=tensors["embeddings.token_type_embeddings.weight"],
        embed_norm_g=vector("embeddings.LayerNorm.weight"),
        embed_norm_b=vector("embeddings.LayerNorm.bias"), layers=layers, **head)


def random_bert_weights(cfg: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """transformers' initialisation of a BERT: N(0, 0.02) matrices, unit norms, zero biases."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(cfg).items():
        if "LayerNorm.weight" in name:
            tensors[name] = np.ones(shape, np.float32)
        elif name.endswith(".bias"):
            tensors[name] = np.zeros(shape, np.float32)
        else:
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    return tensors
