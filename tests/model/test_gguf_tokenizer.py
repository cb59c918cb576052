"""The tokenizer rebuilt from a GGUF's metadata (`model/checkpoint/gguf_tokenizer.py`) against two
references: the checkpoint's own tokenizer.json the converter read (each test checkpoint's set
to the pipeline of the published tokenizers its `tokenizer.ggml.pre` names: GPT-2's, Llama 3's,
Qwen2's, SmolLM's), and transformers' own GGUF loading (`from_pretrained(dir, gguf_file=...)`),
on texts in many scripts; and the chat template's prompt, rendered by our chat path, against
transformers' rendering from the checkpoint."""

from __future__ import annotations

import pytest

from nanovllm.chat_template import checkpoint_template
from nanovllm.model.checkpoint.dummy import cache_root
from nanovllm.model.checkpoint.gguf_loader import gguf_checkpoint_dir
from nanovllm.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "Hello world", "  leading spaces, trailing spaces  ", "numbers 12345 and 3.14159, 1,000,000",
    "don't I'LL we've THEY'RE", "Grüße aus München — naïve café, déjà vu", "日本語のテキストです。",
    "中文文本，包括标点符号！", "Привет, мир! Как дела?", "مرحبا بالعالم", "नमस्ते दुनिया",
    "한국어 텍스트", "Ελληνικά κείμενα", "emoji 🎉🚀 and 👩‍👩‍👧", "line\n\nbreaks\r\n\ttabs   gaps",
    "code: def f(x):\n    return x ** 2  # square", "<|endoftext|> inside text",
]
# The pre-tokenizer names transformers' GGUF loading implements; for SmolLM's (single digits)
# it falls back to GPT-2's split, so it is compared on texts without digits.
MODELS = ["gpt2", "llama3", "llama", "qwen2", "qwen3-chat"]


def ours(gguf_path) -> Tokenizer:
    return Tokenizer(gguf_checkpoint_dir(gguf_path, cache_root() / "gguf"), 0)


@pytest.mark.parametrize("model", MODELS)
def test_ids_equal_the_original_tokenizer_and_transformers_gguf_loading(gguf_file, model):
    from transformers import AutoTokenizer

    hf_dir, path = gguf_file(model)
    tokenizer = ours(path)
    original = AutoTokenizer.from_pretrained(hf_dir)
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == original.encode(text), text
        if model != "llama" or not any(c.isdigit() for c in text):
            assert ids == from_gguf.encode(text), text
        assert tokenizer.decode(ids, skip_special_tokens=False) == original.decode(ids)


def test_special_and_added_tokens_match_whole(gguf_file):
    """Qwen3's turn markers are special, its <think> and <tool_call> tags added tokens: each one
    id in a text, and the specials dropped when decoding."""
    from transformers import AutoTokenizer

    hf_dir, path = gguf_file("qwen3-chat")
    tokenizer, original = ours(path), AutoTokenizer.from_pretrained(hf_dir)
    text = "<|im_start|>user\n<think>hm</think><tool_call>{}</tool_call><|im_end|>"
    ids = tokenizer.encode(text)
    assert ids == original.encode(text)
    assert original.convert_tokens_to_ids("<|im_start|>") in ids
    assert tokenizer.decode(ids) == original.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("model", ["llama3", "qwen3-chat"])
def test_chat_prompt_is_transformers_rendering(gguf_file, model):
    from transformers import AutoTokenizer

    hf_dir, path = gguf_file(model)
    derived = gguf_checkpoint_dir(path, cache_root() / "gguf")
    original = AutoTokenizer.from_pretrained(hf_dir)
    template = checkpoint_template(derived, None, original.eos_token)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Grüße! What is 2 + 2?"},
                {"role": "assistant", "content": "4."}, {"role": "user", "content": "Why?"}]
    text = template.render(messages, add_generation_prompt=True)
    assert text == original.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=False)
    assert Tokenizer(derived, 0).encode(text, add_special_tokens=False) == original.encode(
        text, add_special_tokens=False)


def test_sentencepiece_ids_equal_sentencepiece_and_transformers_gguf_loading(gguf_file):
    """A Llama 2 style vocabulary (SentencePiece BPE with scores and byte fallback): the ids of
    SentencePiece itself on the tokenizer.model the file came from, BOS first (as llama.cpp
    runs it: a `▁` before every text), and of transformers' GGUF loading but where a text starts
    with a space (it adds no `▁` there); decoding gives the text back."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    hf_dir, path = gguf_file("llama-spm")
    tokenizer = ours(path)
    processor = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    from_gguf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == [processor.bos_id(), *processor.encode(text)], text
        if not text[0].isspace():
            assert ids == from_gguf.encode(text), text
        assert tokenizer.decode(ids) == processor.decode(ids[1:]) == text


def test_sentencepiece_text_streams_back(gguf_file):
    """The engine's incremental detokenizer reads the rebuilt vocabulary's `▁` and `<0xNN>`
    pieces as spaces and bytes (a character split across byte tokens waits for its last)."""
    _, path = gguf_file("llama-spm")
    tokenizer = ours(path)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        stream = IncrementalDetokenizer(tokenizer)
        streamed = "".join(stream.step(i) for i in ids) + stream.flush()
        assert streamed == " " + text  # the prefix `▁` of the first piece
