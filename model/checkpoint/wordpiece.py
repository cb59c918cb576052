"""A WordPiece tokenizer of any size for the BERT checkpoints we write ourselves.

BERT's real vocabulary is not ours to ship, so this one keeps its layout where it matters to
the model: `[PAD]` 0, `[UNK]` 100, `[CLS]` 101, `[SEP]` 102, `[MASK]` 103 (unused slots
between), then single characters and their `##` continuations, then whole words and word
pieces taken from GPT-2's vocabulary (a word-initial `Ġword` is `word`, an inner piece
`##piece`), padded with `[unusedN]` to the size asked. Its pipeline is BERT's uncased one:
lowercasing and accent stripping, splitting on whitespace and punctuation, and
`[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` with token types 0 and 1 around the texts.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from nanovllm.model.checkpoint.tokenizer_files import gpt2_vocab_files

SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
FIRST_FREE = 104


def wordpiece_vocab(vocab_size: int) -> list[str]:
    """The tokens in id order (see the module's doc)."""
    if vocab_size < FIRST_FREE + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for BERT's layout "
                         f"(need > {FIRST_FREE})")
    tokens = [f"[unused{i}]" for i in range(FIRST_FREE)]
    for name, i in SPECIALS.items():
        tokens[i] = name
    chars = string.ascii_lowercase + string.digits + string.punctuation
    candidates = [*chars, *("##" + c for c in string.ascii_lowercase + string.digits)]
    gpt2 = gpt2_vocab_files()
    for piece in (sorted(gpt2[0], key=gpt2[0].get) if gpt2 else ()):
        word = piece[1:] if piece.startswith("Ġ") else "##" + piece
        if word.lstrip("#").isascii() and word.lstrip("#").isalpha() and word == word.lower():
            candidates.append(word)
    seen = set(tokens)
    for token in candidates:
        if len(tokens) == vocab_size:
            break
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    tokens += [f"[unused{i}]" for i in range(FIRST_FREE, FIRST_FREE + vocab_size - len(tokens))]
    return tokens


def write_wordpiece_tokenizer(out_dir: Path, vocab_size: int, n_positions: int) -> None:
    """tokenizer.json (the `tokenizers` pipeline), vocab.txt and tokenizer_config.json."""
    tokens = wordpiece_vocab(vocab_size)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", SPECIALS["[CLS]"]), ("[SEP]", SPECIALS["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(list(SPECIALS))
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
              "model_max_length": n_positions, "pad_token": "[PAD]", "unk_token": "[UNK]",
              "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
              "clean_up_tokenization_spaces": True}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
