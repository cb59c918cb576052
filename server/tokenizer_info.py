"""`GET /tokenizer_info` (vLLM's, behind --enable-tokenizer-info-endpoint): the tokenizer's
configuration, so that a client such as lm-eval's remote tokenizer can work without fetching
the tokenizer from the hub.

vLLM answers with the Hugging Face tokenizer's init kwargs (tokenizer_config.json without
file paths), plus `tokenizer_class` and the chat template in use.
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


def tokenizer_info(config: dict, eos_token: str, max_model_len: int,
                   chat_template: str | None) -> dict:
    info = {k: v for k, v in config.items() if k not in _FILE_KEYS}
    info.setdefault("eos_token", eos_token)
    info.setdefault("bos_token", eos_token)  # GPT-2's one special token is both
    info["model_max_length"] = max_model_len
    # The fast tokenizer is what the `tokenizers` library runs (vLLM reports the class it loaded).
    info["tokenizer_class"] = "GPT2TokenizerFast"
    if chat_template is not None:
        info["chat_template"] = chat_template
    else:
        info.pop("chat_template", None)
    return info
