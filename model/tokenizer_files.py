"""Tokenizer files for checkpoints we write ourselves.

A dummy checkpoint needs a tokenizer that covers the model's whole vocabulary, so that every
sampled id decodes to text. We train a byte-level BPE (GPT-2's scheme) on text every Python
install has, its own standard library sources, and put `<|endoftext|>` last, where GPT-2 has it.
Training the 50,257-token vocabulary takes a few seconds, so results are cached per size.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOT = "<|endoftext|>"
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
CACHE_VERSION = 2  # bump when the files written change, so stale caches are not reused


def _stdlib_texts() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" not in path.parts:
            yield path.read_text(encoding="utf-8", errors="replace")


def train_bpe(vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE with exactly `vocab_size` ids; `<|endoftext|>` is the last."""
    if vocab_size < 258:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE (need >= 258)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_stdlib_texts(), trainer)
    # If the corpus runs out of merges first, fill the gap with plain tokens so every id decodes.
    missing = vocab_size - 1 - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<|filler_{i}|>" for i in range(missing)])
    tok.add_special_tokens([EOT])
    assert tok.get_vocab_size() == vocab_size and tok.token_to_id(EOT) == vocab_size - 1
    return tok


def _save_vocab_and_merges(tok: Tokenizer, out_dir: Path) -> None:
    """vocab.json + merges.txt, the files GPT2Tokenizer reads. Like GPT-2's own vocab.json, it
    lists the added tokens too (`<|endoftext|>` last), which the BPE model alone leaves out."""
    tok.model.save(str(out_dir))
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    vocab.update({t.content: i for i, t in tok.get_added_tokens_decoder().items()})
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


def tokenizer_config(n_positions: int) -> dict:
    return {"tokenizer_class": "GPT2Tokenizer", "bos_token": EOT, "eos_token": EOT,
            "unk_token": EOT, "model_max_length": n_positions, "add_prefix_space": False}


def write_trained_tokenizer(out_dir: Path, vocab_size: int, n_positions: int, cache_dir: Path) -> None:
    cached = cache_dir / f"bpe-{vocab_size}-v{CACHE_VERSION}"
    if not (cached / "tokenizer.json").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        # A private temporary directory, renamed into place: concurrent writers never collide.
        tmp = Path(tempfile.mkdtemp(prefix=f"bpe-{vocab_size}.", dir=cache_dir))
        try:
            tok = train_bpe(vocab_size)
            tok.save(str(tmp / "tokenizer.json"))
            _save_vocab_and_merges(tok, tmp)
            tmp.rename(cached)
        except OSError:
            if not (cached / "tokenizer.json").exists():  # not just a lost race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(cached / name, out_dir / name)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(n_positions), indent=2))


def copy_tokenizer(src: Path, out_dir: Path, vocab_size: int) -> None:
    """Copies a user-given tokenizer directory (e.g. GPT-2's real one), checking it fits the model."""
    if not src.is_dir():
        raise ValueError(f"{src}: tokenizer directory does not exist")
    if not (src / "tokenizer.json").exists():
        raise ValueError(f"{src}: no tokenizer.json in the tokenizer directory")
    size = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab_size()
    if size != vocab_size:
        raise ValueError(f"{src}: tokenizer has {size} tokens but the model's vocab_size is {vocab_size}")
    for name in FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, out_dir / name)
