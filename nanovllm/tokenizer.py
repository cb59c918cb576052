"""A checkpoint's tokenizer through the `tokenizers` library, and incremental detokenizing.

Every token stands for a fixed string of bytes, and a character may be split across tokens
(emoji, accented letters): in a byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen2) each character
of a piece stands for a byte; in a SentencePiece vocabulary (Llama 2, TinyLlama, Mistral) `▁`
is a space and `<0xNN>` a raw byte. So text is produced by feeding each new token's bytes to an
incremental UTF-8 decoder: it holds back an unfinished character and replaces invalid bytes
exactly as a full decode does. Each step costs one token, not the whole output.

`encode` adds the special tokens the tokenizer's own post-processor adds, as transformers and
vLLM do for a completion's prompt: BOS for Llama, nothing for GPT-2. A rendered chat template
already holds them, so chat encodes with `add_special_tokens=False`.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from nanovllm.values.stop_strings import find_stop, held_back  # noqa: F401 - the engine's names


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters of its vocabulary back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def byte_level_translation() -> dict[int, str]:
    """`byte_level_alphabet` as a `str.translate` table onto the Latin-1 character of each byte,
    so a piece's bytes are `piece.translate(table).encode("latin-1")`. Characters below 256 that
    are not in the alphabet map to one above it, so their piece fails to encode, as any other
    stranger does (a piece of a vocabulary that is not byte-level)."""
    table = {ord(c): chr(b) for c, b in byte_level_alphabet().items()}
    return {**{b: "\uffff" for b in range(256) if b not in table}, **table}


class Tokenizer:
    def __init__(self, model_dir: str | Path, eos_token_id: int):
        self.model_dir = model_dir = Path(model_dir)  # where its files (and config) are
        if (model_dir / "tokenizer.json").exists():
            self._tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        elif (model_dir / "vocab.json").exists() and (model_dir / "merges.txt").exists():
            from tokenizers.implementations import ByteLevelBPETokenizer
            self._tok = ByteLevelBPETokenizer(str(model_dir / "vocab.json"),
                                              str(model_dir / "merges.txt"))
            eos = self._tok.id_to_token(eos_token_id)
            if eos is not None:  # vocab.json alone does not say it is special; GPT-2's EOS is
                self._tok.add_special_tokens([eos])
        else:
            raise ValueError(f"{model_dir}: no tokenizer.json (or vocab.json + merges.txt)")
        self.eos_token_id = eos_token_id
        self.vocab_size = self._tok.get_vocab_size()
        self.token_bytes, self.special_ids = self._byte_table()
        # A token stands for at most this many bytes, so for at most this many characters: a
        # text longer than max_model_len x this cannot fit the context, tokenized or not.
        self.max_token_chars = max(map(len, self.token_bytes), default=1)

    def _byte_table(self) -> tuple[list[bytes], frozenset[int]]:
        """The bytes each token id stands for, and the ids of special tokens."""
        added = self._tok.get_added_tokens_decoder()
        to_latin1 = byte_level_translation()
        sentencepiece = self._is_sentencepiece()
        table = []
        for i in range(self.vocab_size):
            if i in added:
                table.append(added[i].content.encode())
                continue
            piece = self._tok.id_to_token(i) or ""
            try:
                table.append(sentencepiece_bytes(piece) if sentencepiece
                             else piece.translate(to_latin1).encode("latin-1"))
            except UnicodeEncodeError:  # neither: fall back to the library's decode
                table.append(self._tok.decode([i], skip_special_tokens=False).encode())
        return table, frozenset(i for i, t in added.items() if t.special)

    def _is_sentencepiece(self) -> bool:
        """A SentencePiece-style vocabulary: its decoder turns `▁` back into spaces (a
        Metaspace decoder, or a Replace of `▁` as Llama 2's tokenizer.json has it)."""
        decoder = self._tok.decoder  # its JSON alone: the whole tokenizer's is megabytes
        spec = decoder.__getstate__().decode() if decoder is not None else ""
        return "Metaspace" in spec or "\u2581" in spec

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, with the special tokens the tokenizer adds (BOS for Llama; none for
        GPT-2) unless `add_special_tokens` is False. Through the batch API: unlike `encode`, it
        releases the GIL, so a long text tokenizing on a worker thread does not stall the event
        loop or the engine."""
        return self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_pair(self, first: str, second: str | None = None,
                    max_tokens: int | None = None) -> tuple[list[int], list[int]]:
        """A text, or a pair of texts as one sequence as a cross-encoder reads it (`[CLS] A
        [SEP] B [SEP]` for BERT): its token ids and token type ids (0 for the first text's, 1
        for the second's), from the tokenizer's own post-processor. With `max_tokens`, the
        texts' own tokens are cut from the end so that the whole fits with its special tokens
        (`longest_first`)."""
        texts = [first] if second is None else [first, second]
        parts = self._tok.encode_batch(texts, add_special_tokens=False)
        if max_tokens is not None:
            room = max(0, max_tokens - self._tok.num_special_tokens_to_add(second is not None))
            for part, n in zip(parts, longest_first([len(p.ids) for p in parts], room)):
                part.truncate(n)
        encoding = self._tok.post_process(parts[0], parts[1] if second is not None else None)
        return encoding.ids, encoding.type_ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def vocab_token(self, token_id: int) -> str:
        """The token's string in the vocabulary ("Ġis"), which clients map back to its id."""
        return self._tok.id_to_token(token_id) or ""

    def decode_token(self, token_id: int) -> str:
        """The text of one token, as vLLM's `decoded_token` (partial UTF-8 shows as U+FFFD)."""
        return self._tok.decode([token_id], skip_special_tokens=False)


def longest_first(lengths: list[int], room: int) -> list[int]:
    """How many tokens of one or two texts to keep so that they fit `room`, as transformers'
    `truncation="longest_first"`: the longer text is cut down to the shorter's length first,
    then both evenly (the longer, or on a tie the second, keeping one more when the cut is
    odd)."""
    if sum(lengths) <= room:
        return lengths
    if len(lengths) == 1:
        return [room]
    (a, b), cut = lengths, sum(lengths) - room
    first = min(abs(a - b), cut)
    even = cut - first
    if a > b:
        return [a - first - even // 2, b - (even - even // 2)]
    return [a - (even - even // 2), b - first - even // 2]


BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def sentencepiece_bytes(piece: str) -> bytes:
    """A SentencePiece piece's bytes: `<0xNN>` is that byte, `▁` a space."""
    byte = BYTE_PIECE.fullmatch(piece)
    return bytes([int(byte[1], 16)]) if byte else piece.replace("\u2581", " ").encode()


class IncrementalDetokenizer:
    __slots__ = ("_table", "_skip", "_utf8")

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._table = tokenizer.token_bytes
        self._skip = tokenizer.special_ids if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        """The new text that `token_id` completes (an unfinished character waits)."""
        if token_id in self._skip or token_id >= len(self._table):
            return ""
        return self._utf8.decode(self._table[token_id])

    def flush(self) -> str:
        """At the end: whatever is still held back, as replacement characters."""
        return self._utf8.decode(b"", final=True)
