"""GPT-2's byte-level BPE through the `tokenizers` library, and incremental detokenizing.

Byte-level tokens can split a UTF-8 character (emoji, accented letters) across tokens, so text
is produced incrementally: decode a short window of recent tokens and emit only what follows a
prefix that already decoded cleanly. Each step costs a few tokens of decoding, not the whole
output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

REPLACEMENT = "\ufffd"
MAX_BYTES_PER_CHAR = 4


class Tokenizer:
    def __init__(self, model_dir: str | Path, eos_token_id: int):
        model_dir = Path(model_dir)
        if (model_dir / "tokenizer.json").exists():
            self._tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        elif (model_dir / "vocab.json").exists() and (model_dir / "merges.txt").exists():
            from tokenizers.implementations import ByteLevelBPETokenizer
            self._tok = ByteLevelBPETokenizer(str(model_dir / "vocab.json"),
                                              str(model_dir / "merges.txt"))
        else:
            raise ValueError(f"{model_dir}: no tokenizer.json (or vocab.json + merges.txt)")
        self.eos_token_id = eos_token_id
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_token(self, token_id: int) -> str:
        """The text of one token, as vLLM's `decoded_token` (partial UTF-8 shows as U+FFFD)."""
        return self._tok.decode([token_id], skip_special_tokens=False)


@dataclass(slots=True)
class IncrementalDetokenizer:
    tokenizer: Tokenizer
    skip_special_tokens: bool = True
    prefix_offset: int = 0   # window start: tokens before it are already text
    read_offset: int = 0     # tokens before it have been emitted

    def step(self, token_ids: list[int], final: bool = False) -> str:
        """New text for `token_ids` (the whole output so far); holds back a split character."""
        decode = self.tokenizer.decode
        prefix = decode(token_ids[self.prefix_offset:self.read_offset], self.skip_special_tokens)
        text = decode(token_ids[self.prefix_offset:], self.skip_special_tokens)
        # A character needs at most 4 byte-tokens; past that a U+FFFD is really in the output.
        pending = len(token_ids) - self.read_offset
        if not final and text.endswith(REPLACEMENT) and pending < MAX_BYTES_PER_CHAR:
            return ""
        if len(text) <= len(prefix) and not final:
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(token_ids)
        return text[len(prefix):]


def find_stop(text: str, stops: list[str], start: int) -> tuple[int, str] | None:
    """The earliest stop string in `text[start:]`, as (index, stop)."""
    hits = [(i, s) for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still be the start of a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)
