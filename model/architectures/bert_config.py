"""Hyper-parameters of BERT-family encoders: the config.json fields we use, and the presets.

BERT differs from the decoders in what it is for, not only in its layers: it reads a whole text
at once (every token attends to every other, both ways) and its output is the text's hidden
states, which a pooling step turns into one vector (`model/layers/pooling.py`), or, for a
cross-encoder (`BertForSequenceClassification`), a score per label from the first token's.
Its layers: learned absolute positions plus a token type (segment) embedding, layer norm
*after* each residual add (post-norm), and the exact, erf-based GELU.

The engine reads the same GPT-2-named properties of any config (n_layer, n_head, n_embd,
n_positions, head_dim, num_kv_heads, vocab_size, eos_token_id, num_params): an encoder has no
end of text to generate, so its `eos_token_ids` is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanovllm.model.architectures.hf_config import read_config

BERT_ARCHITECTURES = ("BertModel", "BertForSequenceClassification")
GELU_ACTS = ("gelu", "gelu_python")  # erf GELU; the tanh approximation is GPT-2's


@dataclass(frozen=True, slots=True)
class BertConfig:
    architecture: str = "BertModel"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 0              # BertForSequenceClassification's outputs; 0 for BertModel

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.architecture not in BERT_ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of "
                             f"{', '.join(BERT_ARCHITECTURES)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if not isinstance(self.layer_norm_eps, int | float) or self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        if self.is_classifier != (self.num_labels > 0):
            raise ValueError(f"{self.architecture} with num_labels={self.num_labels}")

    @property
    def is_classifier(self) -> bool:
        return self.architecture == "BertForSequenceClassification"

    # The engine's names (GPT-2's).
    n_layer = property(lambda self: self.num_hidden_layers)
    n_head = property(lambda self: self.num_attention_heads)
    n_embd = property(lambda self: self.hidden_size)
    n_positions = property(lambda self: self.max_position_embeddings)
    num_kv_heads = property(lambda self: self.num_attention_heads)
    eos_token_ids = property(lambda self: ())
    eos_token_id = property(lambda self: None)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_params(self) -> int:
        e, i = self.hidden_size, self.intermediate_size
        per_layer = 4 * e * e + 4 * e + 2 * e * i + i + e + 4 * e
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * e
        head = e * e + e + (self.num_labels * (e + 1) if self.is_classifier else 0)
        return embeddings + 2 * e + self.num_hidden_layers * per_layer + head

    def text_multiply_adds(self, length: int) -> int:
        """Multiply-adds of one text of `length` tokens through the layers: the linear layers
        (Q, K, V, output, MLP up and down) and attention's two products (queries x keys, every
        token against every other, and probabilities x values). Embeddings, norms, GELU and
        pooling are not counted (a few per element, not per weight)."""
        e, i = self.hidden_size, self.intermediate_size
        return self.num_hidden_layers * (length * (4 * e * e + 2 * e * i) + 2 * length * length * e)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> BertConfig:
        """Reads a Hugging Face BERT config, refusing the variants this model does not run."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        names = d.get("architectures") or ["BertModel"]
        act = d.get("hidden_act", "gelu")
        if act not in GELU_ACTS:
            raise ValueError(f"{source}: hidden_act {act!r} is not supported (gelu only)")
        kind = d.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"{source}: position_embedding_type {kind!r} is not supported "
                             "(absolute only)")
        fields = {k: d[k] for k in cls.__dataclass_fields__
                  if k not in ("architecture", "num_labels") and d.get(k) is not None}
        labels = 0
        if names[0] == "BertForSequenceClassification":
            labels = len(d["id2label"]) if isinstance(d.get("id2label"), dict) else \
                d.get("num_labels", 2)
        try:
            return cls(architecture=names[0], num_labels=labels, **fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        return cls.from_dict(read_config(path), source=str(path))

    def to_hf_dict(self) -> dict:
        """The config.json a Hugging Face BERT checkpoint carries."""
        d = {"architectures": [self.architecture], "model_type": "bert", "hidden_act": "gelu",
             "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1,
             "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
             **{k: getattr(self, k) for k in self.__dataclass_fields__
                if k not in ("architecture", "num_labels")}}
        if self.is_classifier:
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return d


MINILM_L6 = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536)
# Real shapes of the encoders people run on a CPU, for `--load-format dummy` and benchmarks.
BERT_PRESETS: dict[str, BertConfig] = {
    "all-minilm-l6-v2": BertConfig(**MINILM_L6),
    "bge-small-en-v1.5": BertConfig(hidden_size=384, num_hidden_layers=12,
                                    num_attention_heads=12, intermediate_size=1536),
    "ms-marco-minilm-l6-v2": BertConfig(architecture="BertForSequenceClassification",
                                        num_labels=1, **MINILM_L6),
}
