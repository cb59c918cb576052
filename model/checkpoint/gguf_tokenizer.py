"""A GGUF's tokenizer, rebuilt from its metadata (`tokenizer.ggml.*`) as a `tokenizers.Tokenizer`
and the tokenizer_config.json a Hugging Face checkpoint would carry beside it.

Two kinds, as `tokenizer.ggml.model` says. "gpt2": a byte-level BPE (GPT-2, Llama 3, SmolLM2,
Qwen2/3), its vocabulary and merges stored, its pre-tokenizer (how text is split before the
merges) named by `tokenizer.ggml.pre`, which picks the split of the original tokenizer.json
(`PRE_TOKENIZERS`). "llama": a SentencePiece vocabulary with scores (Llama 2, TinyLlama,
Mistral), run as transformers runs it: a BPE whose merges come from the scores, falling back to
`<0xNN>` byte tokens. Token types mark the special tokens (control and unknown) and the added
ones (user-defined, such as `<think>`), which match whole in a text.

The special tokens' ids, whether BOS (or EOS) is added to a text, the chat template and the
context length come from the metadata too. A file that embeds its whole tokenizer.json
(`tokenizer.huggingface.json`) gets that.
"""

from __future__ import annotations

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from nanovllm.model.checkpoint.safetensors_io import CheckpointError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # token_type values

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split(regex: str) -> pre_tokenizers.PreTokenizer:
    """Split by `regex` (each match a piece), then spell the bytes in GPT-2's alphabet."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's own split


def _smollm() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


# tokenizer.ggml.pre -> (its pre-tokenizer, its normalizer or None, whether the merges are
# skipped for a word that is a token itself), as the original tokenizer.json has them.
# "default" (or no name) is GPT-2's split, as transformers reads such a file.
PRE_TOKENIZERS = {
    "default": (_gpt2, None, False), "gpt-2": (_gpt2, None, False),
    "llama-bpe": (lambda: _split(_LLAMA3_SPLIT), None, True),
    "llama3": (lambda: _split(_LLAMA3_SPLIT), None, True),
    "llama-v3": (lambda: _split(_LLAMA3_SPLIT), None, True),
    "qwen2": (lambda: _split(_QWEN2_SPLIT), normalizers.NFC, False),
    "smollm": (_smollm, None, False),
}
MODELS = ("gpt2", "llama")


def build_tokenizer(path, metadata: dict) -> tuple[Tokenizer, dict]:
    """The tokenizer and its tokenizer_config.json (special tokens, BOS rule, chat template,
    model_max_length) of a GGUF's metadata; a CheckpointError naming what we cannot build."""
    if "tokenizer.huggingface.json" in metadata:
        tok = Tokenizer.from_str(metadata["tokenizer.huggingface.json"])
    else:
        kind = metadata.get("tokenizer.ggml.model")
        if kind not in MODELS:
            raise CheckpointError(f"{path}: tokenizer model {kind!r} is not supported; "
                                  f"supported: {', '.join(MODELS)}")
        tok = _byte_level(path, metadata) if kind == "gpt2" else _sentencepiece(metadata)
        _add_tokens(tok, metadata)
        _add_post_processor(tok, metadata)
    return tok, tokenizer_config(metadata)


def _byte_level(path, metadata: dict) -> Tokenizer:
    pre = metadata.get("tokenizer.ggml.pre") or "default"
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: tokenizer pre-tokenizer {pre!r} is not supported; "
                              f"supported: {', '.join(PRE_TOKENIZERS)}")
    pre_tokenizer, normalizer, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                               continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer()
    if normalizer is not None:
        tok.normalizer = normalizer()
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(metadata: dict) -> Tokenizer:
    tokens, scores = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.scores"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = ([tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
              if "tokenizer.ggml.merges" in metadata else merges_from_scores(vocab, scores))
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=None if unk is None else tokens[unk],
                               fuse_unk=True, byte_fallback=True))
    # Spaces as `▁`, and one before each text between special tokens, as SentencePiece and
    # llama.cpp do (and Llama 2's tokenizer.json); transformers' GGUF loading adds none to a
    # text that starts with a space.
    prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
    replace = normalizers.Replace(" ", "\u2581")
    tok.normalizer = (normalizers.Sequence([normalizers.Prepend("\u2581"), replace])
                      if prefix else replace)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok


def merges_from_scores(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """A SentencePiece vocabulary's merges, best first: every split of a token into two tokens,
    ranked by the whole token's score (as transformers' `generate_merges`)."""
    found = []
    for token, i in vocab.items():
        pairs = [(token[:k], token[k:]) for k in range(1, len(token))
                 if token[:k] in vocab and token[k:] in vocab]
        pairs.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found.extend((left, right, scores[i]) for left, right in pairs)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _add_tokens(tok: Tokenizer, metadata: dict) -> None:
    """Control and unknown tokens as special tokens, user-defined ones as added tokens: both
    match whole in a text."""
    tokens, types = metadata["tokenizer.ggml.tokens"], metadata.get("tokenizer.ggml.token_type", [])
    special = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types) if kind in (CONTROL, UNKNOWN)]
    added = [AddedToken(t, special=False, normalized=False)
             for t, kind in zip(tokens, types) if kind == USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(added)


def _add_post_processor(tok: Tokenizer, metadata: dict) -> None:
    """BOS before (and EOS after) each text where the file says so."""
    tokens = metadata["tokenizer.ggml.tokens"]
    steps = [processors.ByteLevel(trim_offsets=False)] \
        if metadata["tokenizer.ggml.model"] == "gpt2" else []
    bos, eos = (metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos"))
    single, specials = "$A", []
    if add_bos(metadata) and bos is not None:
        single, specials = f"{tokens[bos]} {single}", [(tokens[bos], bos)]
    if metadata.get("tokenizer.ggml.add_eos_token") and eos is not None:
        single, specials = f"{single} {tokens[eos]}", [*specials, (tokens[eos], eos)]
    if specials:
        pair = f"{single} {single.replace('$A', '$B')}"
        steps.append(processors.TemplateProcessing(single=single, pair=pair,
                                                   special_tokens=list(dict.fromkeys(specials))))
    if steps:
        tok.post_processor = processors.Sequence(steps)


def add_bos(metadata: dict) -> bool:
    """`tokenizer.ggml.add_bos_token`, else llama.cpp's default: SentencePiece vocabularies and
    Llama 3's add BOS, other byte-level ones do not."""
    if "tokenizer.ggml.add_bos_token" in metadata:
        return bool(metadata["tokenizer.ggml.add_bos_token"])
    return (metadata.get("tokenizer.ggml.model") == "llama"
            or metadata.get("tokenizer.ggml.pre") in ("llama-bpe", "llama3", "llama-v3"))


def tokenizer_config(metadata: dict) -> dict:
    """tokenizer_config.json: the special tokens by name, the BOS/EOS rule, the chat template
    and the context length."""
    tokens = metadata.get("tokenizer.ggml.tokens", [])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": add_bos(metadata),
              "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False))}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                      ("pad_token", "padding")):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= token_id < len(tokens):
            config[name] = tokens[token_id]
    arch = metadata.get("general.architecture")
    if (context := metadata.get(f"{arch}.context_length")) is not None:
        config["model_max_length"] = context
    if isinstance(template := metadata.get("tokenizer.chat_template"), str):
        config["chat_template"] = template
    return config
