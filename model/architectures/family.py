"""A model family as one declaration: what its checkpoint holds and where each tensor goes.

`families.py` holds one `Family` per model family and maps config.json's architectures to
them. One generic loader (`model/checkpoint/loader.py`) and one dummy writer
(`model/checkpoint/dummy.py`) read these entries; nothing else spells a Hugging Face tensor
name or shape.

A `Param` is one field of the family's weights, from one HF tensor or several fused as rows in
the order listed (q/k/v into one matrix, gate/up into another: nano-vllm's
`packed_modules_mapping`, written the other way round). Each part is `"name D1 D2"`: the HF
name (a layer's relative to `layer_prefix`) and its shape in the family's `dims` of the config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True, slots=True)
class Param:
    parts: tuple[str, ...]       # "HF-name D1 D2", fused as rows in this order
    matrix: bool = True          # stored as dtype/quantization ask; else float32 as read
    transpose: bool = False      # stored [in, out] on disk (GPT-2's Conv1D): turned to [out, in]
    init: float | str | Callable = 0.02  # dummy weights: N(0, std) (or cfg -> std), "ones", "zeros"
    when: str | None = None      # a config flag: the tensors exist only when it is true
    optional: bool = False       # ... or may be in the file anyway (checked, then unused)
    add: float = 0.0             # added as it is stored (a norm that scales by 1 + weight)

    def names(self) -> list[str]:
        return [part.split()[0] for part in self.parts]

    def shapes(self, dims: dict[str, int]) -> list[tuple[int, ...]]:
        return [tuple(dims[d] for d in part.split()[1:]) for part in self.parts]


def matrix(*parts: str, **options) -> Param:
    """A weight matrix (several fused as rows), stored as `dtype` / `quantization` ask."""
    return Param(parts, **options)


def vector(*parts: str, init: str = "zeros", **options) -> Param:
    """A float32 vector (a bias, a norm's gain; several concatenated)."""
    return Param(parts, matrix=False, init=init, **options)


def table(part: str, **options) -> Param:
    """A float32 table that is only ever gathered from (a position embedding)."""
    return Param((part,), matrix=False, **options)


@dataclass(frozen=True, slots=True)
class TiedHead:
    """The LM head, which is the token embedding when the config ties them (`Family.ties`). A
    tied copy in the file must equal the embedding; untied, it is a matrix of its own."""
    name: str                    # its HF name
    embedding: str               # the field of the embedding it is when tied
    field: str | None = None     # our field for it (None: the model reads the embedding)


@dataclass(frozen=True, slots=True)
class Preset:
    """A published model's shapes, for `--load-format dummy`, and the hub repo it stands for."""
    config: Any
    repo: str
    pooling: tuple[str, int] | None = None  # sentence-transformers' pooling mode, max length
    config_extra: dict = field(default_factory=dict)  # more config.json keys the real one has


@dataclass(frozen=True, slots=True)
class Family:
    architectures: dict[str, str]   # config.json's architecture -> its model_type
    config: type                    # reads config.json (from_json) and writes it (to_hf_dict)
    forward: Callable               # (weights, cfg, token_ids, positions, kv_caches, batch, rows)
    compile_kernels: Callable[..., None]  # (KernelNeeds): the kernels the loaded weights run
    # The plain-numpy path: forward, attention_weights, embed, layers, lm_head, softmax (the
    # functions the forward trace, `trace.py`, steps through).
    reference: ModuleType
    weights: type                   # the weights dataclass: embeddings, layers, head fields
    layer: type                     # one layer's weights dataclass
    dims: Callable[[Any], dict[str, int]]  # the shapes' letters, from the config
    embeddings: dict[str, Param]
    layer_params: dict[str, Param]
    head: dict[str, Param]
    layer_prefix: str               # "layers.{i}."
    prefix: str = "model."          # HF names' prefix, stripped when present
    buffers: str = "$^"             # regex of the un-prefixed names that are no parameters
    tied_head: TiedHead | None = None
    layers_field: str = "layers"
    presets: dict[str, Preset] = field(default_factory=dict)
    tokenizer: str = "llama3"       # the dummy checkpoint's: "gpt2", "llama3" or "wordpiece"

    def ties(self, cfg) -> bool:
        return self.tied_head is not None and cfg.tie_word_embeddings

    def untied_head(self, cfg) -> dict[str, Param]:
        """The LM head's own matrix, when the config does not tie it to the embedding."""
        if self.tied_head is None or self.tied_head.field is None or self.ties(cfg):
            return {}
        return {self.tied_head.field: matrix(f"{self.tied_head.name} V E")}

    def params(self, cfg) -> list[tuple[str, Param]]:
        """(HF name prefix, param) of every field, in the order the dummy writer draws them:
        the embeddings and an untied LM head, each layer's (`layer_prefix` of its index), the
        head's."""
        found = [("", p) for p in {**self.embeddings, **self.untied_head(cfg)}.values()]
        for i in range(cfg.n_layer):
            found += [(self.layer_prefix.format(i=i), p) for p in self.layer_params.values()]
        return found + [("", p) for p in self.head.values()]

    def shapes(self, cfg, optional: bool = False) -> dict[str, tuple[int, ...]]:
        """Every tensor a checkpoint of this config holds, by un-prefixed HF name; with
        `optional`, those it may hold too."""
        dims, shapes = self.dims(cfg), {}
        for prefix, p in self.params(cfg):
            if self.present(p, cfg) or (optional and p.optional):
                for name, shape in zip(p.names(), p.shapes(dims)):
                    shapes[prefix + name] = shape
        return shapes

    @staticmethod
    def present(p: Param, cfg) -> bool:
        return p.when is None or bool(getattr(cfg, p.when))
