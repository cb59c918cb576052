"""GGUF files for tests, written by llama.cpp's own converter, `convert_hf_to_gguf.py`, from the
tiny HF checkpoints the tests make (`llama_checkpoints.py`, `write_dummy_checkpoint`).

The converter is pure Python (torch, transformers, sentencepiece and its own copy of the `gguf`
package); it ships in llama-cpp-python's source package on PyPI, under vendor/llama.cpp, which
`converter_dir` fetches with pip once into the cache. Without PyPI it returns None (tests skip).

It names a byte-level BPE's pre-tokenizer by the hash of the original tokenizer's ids on a fixed
text, known only for published tokenizers; the tests' own tokenizers are cut-down GPT-2 ones, so
`convert` states the name (`pre`) instead, exactly where the converter would have written its
guess. Everything else in the file is the converter's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from nanovllm.scripts.llama_cpp import RUNNER  # the converter, run with a named pre-tokenizer

SDIST = "llama-cpp-python==0.3.36"
VENDOR = "vendor/llama.cpp/"
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")



def converter_dir(cache: Path) -> Path | None:
    """llama.cpp's converter, extracted from llama-cpp-python's sdist into `cache` once; None
    when pip cannot fetch it."""
    out = cache / "llama.cpp-converter"
    if (out / "convert_hf_to_gguf.py").exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                              ":all:", "-d", tmp, SDIST],
                             capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if got.returncode or not archives:
            return None
        staging = Path(tempfile.mkdtemp(dir=cache))
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                rel = member.name.split("/", 1)[-1]
                if rel.startswith(VENDOR) and rel[len(VENDOR):].startswith(KEEP):
                    member.name = rel[len(VENDOR):]
                    tar.extract(member, staging, filter="data")
        try:
            staging.rename(out)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process got there first
    return out


def convert(converter: Path, hf_dir: Path, out: Path, outtype: str = "f32",
            pre: str | None = None) -> Path:
    """`convert_hf_to_gguf.py hf_dir --outfile out --outtype outtype` (f32, f16, bf16, q8_0)."""
    got = subprocess.run([sys.executable, "-c", RUNNER, str(converter), str(hf_dir), str(out),
                          outtype, pre or ""], capture_output=True, text=True)
    if got.returncode:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{got.stderr[-3000:]}")
    return out


# --------------------------------------------------------------------------- checkpoints to convert

# The pre-tokenizers (and normalizer, and whether merges are skipped for whole-word tokens) of
# the published tokenizer.json files each `tokenizer.ggml.pre` name stands for, written out as
# those files have them: a test checkpoint's tokenizer is set to one before conversion, so that
# its own tokenizer is the ground truth for the one rebuilt from the GGUF.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
               "use_regex": False}
_LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
                 "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?"
                "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
PRE_TOKENIZER_JSON = {
    "gpt-2": (None, {**_BYTE_LEVEL, "use_regex": True}, False),
    "llama-bpe": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _LLAMA3_REGEX}, "behavior": "Isolated",
         "invert": False}, _BYTE_LEVEL]}, True),
    "qwen2": ({"type": "NFC"}, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _QWEN2_REGEX}, "behavior": "Isolated",
         "invert": False}, _BYTE_LEVEL]}, False),
    "smollm": (None, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {**_BYTE_LEVEL, "use_regex": True}]}, False),
}


def set_pre_tokenizer(hf_dir: Path, pre: str) -> Path:
    """Gives the checkpoint's tokenizer.json the pipeline of the tokenizers `pre` names."""
    normalizer, pre_tokenizer, ignore_merges = PRE_TOKENIZER_JSON[pre]
    path = hf_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    data.update(normalizer=normalizer, pre_tokenizer=pre_tokenizer)
    data["model"]["ignore_merges"] = ignore_merges
    path.write_text(json.dumps(data))
    return hf_dir


def write_hf_gpt2(out: Path, seed: int = 0) -> Path:
    """A tiny random GPT-2 written by transformers, with random biases and layer norms, and GPT-2's
    vocabulary cut to its size (`tokenizer_files.write_tokenizer`)."""
    import torch
    import transformers

    from nanovllm.model.checkpoint.dummy import cache_root
    from nanovllm.model.checkpoint.tokenizer_files import write_tokenizer

    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1024,
                                     n_positions=256, bos_token_id=1023, eos_token_id=1023)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "ln_" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["n_ctx"] = config["n_positions"]  # as the hub's GPT-2 configs have it (the converter reads it)
    (out / "config.json").write_text(json.dumps(config))
    write_tokenizer(out, 1024, 256, cache_root() / "tokenizers")
    return out


def write_hf_llama_sentencepiece(out: Path, vocab_size: int = 1024) -> Path:
    """A tiny random Llama whose tokenizer is a SentencePiece BPE model (tokenizer.model, as Llama
    2 and TinyLlama ship it: byte fallback, digits split, `<unk>` `<s>` `</s>` at 0, 1, 2; runs of
    spaces merge, as llama.cpp and transformers run such a vocabulary),
    trained on Python's standard library sources."""
    import io
    import sysconfig

    import sentencepiece as spm
    from llama_checkpoints import write_hf_llama

    write_hf_llama(out, "Llama", vocab_size=vocab_size)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).unlink()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace")
             for p in sorted(stdlib.glob("*.py"))[:60]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for text in texts for line in text.splitlines() if line),
        model_writer=model, vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
        split_digits=True, split_by_whitespace=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "add_bos_token": True, "legacy": False}))
    for name in ("config.json", "generation_config.json"):
        data = json.loads((out / name).read_text())
        data.update(bos_token_id=1, eos_token_id=2)
        (out / name).write_text(json.dumps(data))
    return out


# --------------------------------------------------------------------------- other tensor types

# Bytes a block of 256 weights takes in each K-quant type, where its float16 scales sit, and
# their size: weights of a few hundredths, as a trained model's (scale x sub-scale x code).
K_BLOCKS = {"Q4_K": (144, (0, 2), 5e-5), "Q5_K": (176, (0, 2), 3e-5),
            "Q6_K": (210, (208,), 2e-5)}


def random_k_blocks(kind: str, rows: int, cols: int, rng) -> np.ndarray:
    """uint8 [rows, bytes per row] of random K-quant blocks (the `gguf` package cannot quantize
    to these types): random codes and sub-scales, each block's float16 scales small."""
    size, scales, scale = K_BLOCKS[kind]
    raw = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
    for at in scales:
        d = (scale * rng.uniform(0.5, 1.5, (rows, cols // 256))).astype(np.float16)
        raw[:, :, at:at + 2] = d.view(np.uint8).reshape(rows, cols // 256, 2)
    return raw.reshape(rows, -1)


def requantize(src: Path, dst: Path, type_of) -> Path:
    """`src` (an F32 GGUF) rewritten with `gguf`'s writer, each matrix `type_of(name, shape)`
    returns (a GGMLQuantizationType name, or None to keep it): quantized by `gguf` (Q8_0, Q4_0,
    Q4_1, Q5_0, Q5_1) or random blocks (Q4_K, Q5_K, Q6_K); the metadata as it was."""
    import gguf
    from gguf.quants import quantize

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            array = field.types[0] == gguf.GGUFValueType.ARRAY
            writer.add_key_value(key, field.contents(), field.types[0],
                                 sub_type=field.types[-1] if array else None)
    rng = np.random.default_rng(0)
    for t in reader.tensors:
        data = np.asarray(t.data)
        kind = type_of(t.name, data.shape) if data.ndim == 2 else None
        if kind is None:
            writer.add_tensor(t.name, data)
        elif kind in K_BLOCKS:
            writer.add_tensor(t.name, random_k_blocks(kind, *data.shape, rng),
                              raw_dtype=gguf.GGMLQuantizationType[kind])
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst
