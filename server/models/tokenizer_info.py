"""/tokenizer_info's answer (vLLM's, behind --enable-tokenizer-info-endpoint): the tokenizer's
configuration, so that a client such as lm-eval's remote tokenizer can work without fetching
the tokenizer from the hub. vLLM answers with the Hugging Face tokenizer's init kwargs
(tokenizer_config.json without file paths), plus `tokenizer_class` and the chat template in use.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

CONFIG_FILE = "tokenizer_config.json"
_FILE_KEYS = ("vocab_file", "merges_file", "tokenizer_file", "name_or_path")


def read_tokenizer_config(tokenizer_dir: str | Path) -> dict:
    """The directory's tokenizer_config.json, or {} if it has none (or an unreadable one)."""
    path = Path(tokenizer_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return {}
    return config if isinstance(config, dict) else {}


# The fast class transformers' AutoTokenizer (vLLM's loader) picks from config.json's model_type
# when tokenizer_config.json names no class, for the architectures we serve.
_CLASS_BY_MODEL_TYPE = {"gpt2": "GPT2TokenizerFast", "llama": "LlamaTokenizerFast",
                        "mistral": "LlamaTokenizerFast", "qwen2": "Qwen2TokenizerFast",
                        "qwen3": "Qwen2TokenizerFast"}


def tokenizer_class(config: dict, model_type: str | None) -> str:
    """The class vLLM reports: the one its AutoTokenizer(use_fast=True) loads, i.e. the fast
    variant of tokenizer_config.json's `tokenizer_class` (every checkpoint we load has a
    tokenizer.json, which is what a fast tokenizer runs), else the model type's."""
    name = config.get("tokenizer_class")
    if isinstance(name, str) and name:
        return name if name.endswith("Fast") else name + "Fast"
    return _CLASS_BY_MODEL_TYPE.get(model_type, "PreTrainedTokenizerFast")


def _plain(value):
    """An AddedToken written out in full ({"content": ..., "lstrip": ...}) as its text, as vLLM
    serialises the tokenizer's AddedToken objects (special tokens, added_tokens_decoder)."""
    if isinstance(value, dict):
        if isinstance(value.get("content"), str):
            return value["content"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def model_type(model_dir: str | Path) -> str | None:
    """config.json's `model_type` beside the tokenizer, or None (no such file, e.g. a separate
    --tokenizer directory or a Ray ingress, which holds the tokenizer's files only)."""
    try:
        value = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = value.get("model_type") if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def tokenizer_info(config: dict, eos_token: str, max_model_len: int,
                   chat_template: str | None, model_type: str | None = None) -> dict:
    info = {k: _plain(v) for k, v in config.items() if k not in _FILE_KEYS}
    info.setdefault("eos_token", eos_token)
    info.setdefault("bos_token", eos_token)  # GPT-2's one special token is both
    info["model_max_length"] = max_model_len
    info["tokenizer_class"] = tokenizer_class(config, model_type)
    if chat_template is not None:
        info["chat_template"] = chat_template
    else:
        info.pop("chat_template", None)
    return info
