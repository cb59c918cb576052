"""How a checkpoint pools: a text's hidden states to one vector (embeddings), or a
cross-encoder's logits to a score (the math is `model/layers/pooling.py`).

sentence-transformers saves what its `encode` does after the transformer in the checkpoint
directory: `modules.json` lists the modules in order (Transformer, Pooling, Normalize), and the
Pooling module's `config.json` names the mode (`"pooling_mode": "mean"`, or the older
`"pooling_mode_mean_tokens": true` keys). Reading those files here makes our vectors equal
`SentenceTransformer.encode`'s. Without `modules.json` we pool as vLLM does: an encoder's
[CLS] token, a decoder's last token, normalized. A module we do not run (a Dense projection,
say) is refused at load, by name, rather than skipped.

A cross-encoder's score is its classifier's logit through the checkpoint's activation
(`config.json`'s `sentence_transformers.activation_fn`; sigmoid for a single label, as
`CrossEncoder.predict` applies by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "lasttoken")
LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
               "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens":
               "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
               "pooling_mode_lasttoken": "lasttoken"}
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity", "Tanh": "tanh"}


@dataclass(frozen=True, slots=True)
class PoolingConfig:
    modes: tuple[str, ...] = ("cls",)  # concatenated in this order, as sentence-transformers does
    normalize: bool = True
    max_seq_length: int | None = None  # sentence_bert_config.json's, if it says
    # Output sizes the model was trained to be cut to (Matryoshka), from config.json's
    # `matryoshka_dimensions`; `is_matryoshka` without a list allows any size.
    matryoshka: tuple[int, ...] | bool = False
    activation: str = "identity"       # a cross-encoder's, on its logits

    def allows_dimensions(self, dimensions: int) -> bool:
        if self.matryoshka is True:
            return True
        return bool(self.matryoshka) and dimensions in self.matryoshka


class PoolingConfigError(ValueError):
    """A checkpoint whose pooling files we cannot honour; the message names the file."""


def read_pooling_config(model_dir: str | Path, is_encoder: bool,
                        num_labels: int = 0) -> PoolingConfig:
    """The pooling a checkpoint directory asks for (see the module's doc)."""
    model_dir = Path(model_dir)
    config = _json(model_dir / "config.json") or {}
    matryoshka = config.get("matryoshka_dimensions") or bool(config.get("is_matryoshka"))
    if isinstance(matryoshka, list):
        matryoshka = tuple(int(d) for d in matryoshka)
    activation = _activation(config, num_labels)
    bert_config = _json(model_dir / "sentence_bert_config.json") or {}
    max_len = bert_config.get("max_seq_length")
    modules = _json(model_dir / "modules.json")
    if modules is None:
        return PoolingConfig(("cls",) if is_encoder else ("lasttoken",), True,
                             max_len, matryoshka, activation)
    modes, normalize = (("cls",) if is_encoder else ("lasttoken",)), False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            continue
        if kind == "Pooling":
            modes = _modes(model_dir / module.get("path", "") / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise PoolingConfigError(f"{model_dir / 'modules.json'}: module {module.get('type')!r} "
                                     "is not supported (Transformer, Pooling, Normalize only)")
    return PoolingConfig(modes, normalize, max_len, matryoshka, activation)


def has_pooling_module(model_dir: str | Path) -> bool:
    """Whether sentence-transformers saved the checkpoint as an embedding model (its
    `modules.json` lists a Pooling module): vLLM's `--runner auto` pools such a checkpoint even
    when its architecture is a causal LM (Qwen3-Embedding's is Qwen3ForCausalLM)."""
    try:
        modules = _json(Path(model_dir) / "modules.json")
    except PoolingConfigError:
        return False
    return isinstance(modules, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).rsplit(".", 1)[-1] == "Pooling"
        for m in modules)


def _json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PoolingConfigError(f"{path}: cannot read: {e}") from e


def _modes(path: Path) -> tuple[str, ...]:
    d = _json(path) or {}
    mode = d.get("pooling_mode")
    if mode is None:
        mode = [name for key, name in LEGACY_KEYS.items() if d.get(key)]
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise PoolingConfigError(f"{path}: pooling mode {bad or modes!r} is not supported; "
                                 f"supported: {', '.join(MODES)}")
    return modes


def _activation(config: dict, num_labels: int) -> str:
    path = (config.get("sentence_transformers") or {}).get("activation_fn") or \
        config.get("sbert_ce_default_activation_function")
    if path is None:
        return "sigmoid" if num_labels == 1 else "identity"
    name = str(path).rsplit(".", 1)[-1]
    if name not in ACTIVATIONS:
        raise PoolingConfigError(f"config.json: activation_fn {path!r} is not supported; "
                                 f"supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
