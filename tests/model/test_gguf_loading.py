"""GGUF files written by llama.cpp's own converter (`convert_hf_to_gguf.py`) from checkpoints that
transformers' classes wrote load as those checkpoints: the same config, and the logits of
transformers' model on the same checkpoint, both of our forward passes, with each weight
rounded as the file stores it (F16, BF16, Q8_0: `rounded_reference`), to GPT-2's bound 1e-4.
The reference finds each weight's GGUF name with the `gguf` package's own name map, not ours.
Greedy text through the engine equals transformers' `generate`. Block-quantized files run as
stored (`BlockWeight`s, no float32 copy): the weights stand for `gguf`'s dequantization of the
file's bytes, and the model on them agrees with the reference on those values within the block
kernels' bound (tests/model/test_block_gemm.py: activations are rounded per block, or on AMX's
tiles activations and weights to bfloat16).
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from nanovllm import LLM, SamplingParams
from nanovllm.engine_setup import weight_bytes
from nanovllm.model.architectures.registry import family_of, load_checkpoint, read_config
from nanovllm.model.checkpoint.dummy import cache_root
from nanovllm.model.checkpoint.gguf_file import open_gguf
from nanovllm.model.checkpoint.gguf_loader import gguf_checkpoint_dir
from nanovllm.model.checkpoint.safetensors_io import file_mapping
from nanovllm.model.weights.block_quant import LAYOUTS, BlockWeight
from nanovllm.model.weights.quant import dequantize_weights, matrix_formats
from nanovllm.model.weights.stacked import StackedWeight
from tests.model.test_block_gemm import rounded_as_the_kernel

TOL = 1e-4
# The reference model on the dequantized weights against transformers on `gguf`'s
# dequantization, relative to the largest logit (random K-quant blocks make logits of tens).
QUANT_TOL = 1e-5
# The model on the block weights against the reference on their float32 with activations
# rounded per block, relative to the largest logit: test_block_gemm.py's whole-model bound,
# doubled: an input within float32 rounding of a tie takes the next code (one step of its
# block), and these random layers carry that step further than a trained GPT-2's.
BLOCK_TOL = 2e-2
FILES = [("gpt2", "f32"), ("gpt2", "f16"), ("gpt2", "q8_0"), ("llama3", "f32"),
         ("llama3", "f16"), ("llama", "f32"), ("llama", "q8_0"), ("qwen2", "f32"),
         ("qwen3", "f32"), ("qwen3", "bf16")]


def derived(gguf_path):
    return gguf_checkpoint_dir(gguf_path, cache_root() / "gguf")


def rounded_reference(hf_dir, gguf_path):
    """transformers' model of `hf_dir`, float32, each weight the file does not store as F32
    replaced by the value it stores: `gguf`'s own dequantization of its bytes, its rows put back
    in transformers' order (llama's q/k unpermuted: the F32 files check that, weights kept)."""
    import gguf
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    from nanovllm.model.checkpoint.gguf_names import unpermute

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    reader = gguf.GGUFReader(gguf_path)
    tensors = {t.name: t for t in reader.tensors}
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items()
                if n == reader.fields["general.architecture"].contents())
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    cfg = model.config
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = tensors.get(names.get_name(name, try_suffixes=(".weight", ".bias")))
            if t is None or t.tensor_type == gguf.GGMLQuantizationType.F32:
                continue
            w = dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
            if arch == gguf.MODEL_ARCH.LLAMA and ".q_proj." in name:
                w = unpermute(w, cfg.num_attention_heads)
            if arch == gguf.MODEL_ARCH.LLAMA and ".k_proj." in name:
                w = unpermute(w, cfg.num_key_value_heads)
            if cfg.model_type == "gpt2" and p.ndim == 2 and ".h." in name:
                w = w.T  # Conv1D's [in, out]
            p.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    return model


def max_diff(hf_dir, path) -> tuple[float, float]:
    """The larger of both forward passes' max |ours - reference| over 40 random tokens, and the
    reference's max |logit|."""
    cfg, weights = load_checkpoint(derived(path))
    weights = dequantize_weights(weights)  # (a float32 file's: the same arrays)
    family = family_of(cfg)
    hf = rounded_reference(hf_dir, path)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 40)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)[None]).logits[0].numpy()
    diffs = [np.abs(ours - theirs).max() for ours in (
        family.forward(weights, cfg, ids, np.arange(len(ids))),
        family.reference.forward(weights, cfg, ids))]
    return float(max(diffs)), float(np.abs(theirs).max())


@pytest.mark.parametrize("model,outtype", FILES, ids=[f"{m}-{t}" for m, t in FILES])
def test_logits_match_transformers(gguf_file, model, outtype):
    assert max_diff(*gguf_file(model, outtype))[0] <= TOL


# Each block type on every matrix, and a Q4_K_M-like mix (value and down projections and the
# LM head in Q6_K, the rest Q4_K), in files rewritten from an F32 one by `gguf`'s writer.
MIXES = {kind: (lambda name, shape, kind=kind: kind)
         for kind in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")}
MIXES["Q4_K_M"] = lambda name, shape: (
    "Q6_K" if name.endswith(("attn_v.weight", "ffn_down.weight", "output.weight")) else "Q4_K")


def quantized_file(gguf_file, tmp_path, mix):
    from gguf_files import requantize

    hf_dir, f32 = gguf_file("llama-256")
    return hf_dir, requantize(f32, tmp_path / f"llama-256-{mix}.gguf", MIXES[mix])


@pytest.mark.parametrize("mix", MIXES)
def test_block_quantized_files_match_their_dequantized_weights(gguf_file, tmp_path, mix):
    hf_dir, path = quantized_file(gguf_file, tmp_path, mix)
    diff, scale = max_diff(hf_dir, path)
    assert diff <= QUANT_TOL * max(1.0, scale)


@pytest.mark.parametrize("mix", MIXES)
def test_block_quantized_files_run_as_stored(gguf_file, tmp_path, mix, monkeypatch):
    """The model on the file's blocks (fused members of one type joined, of different types
    stacked) agrees with the reference model on their float32 when its linear layers round their
    inputs as the kernels do (`rounded_as_the_kernel`; every matrix here has the mix's blocks:
    Q4_K_M's Q4_K and Q6_K both of 256)."""
    _, path = quantized_file(gguf_file, tmp_path, mix)
    cfg, weights = load_checkpoint(derived(path))
    family = family_of(cfg)
    span = LAYOUTS["Q4_K" if mix == "Q4_K_M" else mix]
    plain = family.reference.linear
    monkeypatch.setattr(family.reference, "linear", lambda x, w, b=None: plain(
        *rounded_as_the_kernel(np.ascontiguousarray(x, np.float32), w, span), b))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 40)
    dense = dequantize_weights(weights)
    for n in (40, 3):  # a prefill's rows, a few
        want = family.reference.forward(dense, cfg, ids[:n])
        got = family.forward(weights, cfg, ids[:n], np.arange(n))
        np.testing.assert_allclose(got, want, rtol=0, atol=BLOCK_TOL * np.abs(want).max())


# Bytes a repacked block weight takes per byte of the file's (`block_quant`: 5- and 6-bit codes
# a byte each; K-quants' scales a byte each), at most, with rows padded to panels of 16.
REPACKED = {"Q8_0": 1.0, "Q4_0": 1.0, "Q4_1": 1.0, "Q4_K": 1.03, "Q5_0": 1.55, "Q5_1": 1.5,
            "Q5_K": 1.57, "Q6_K": 1.31, "Q4_K_M": 1.31}


@pytest.mark.parametrize("mix", MIXES)
def test_block_quantized_weights_hold_no_float32_copy(gguf_file, tmp_path, mix):
    """Every matrix is a BlockWeight (a Q4_K_M fusion of q, k in Q4_K and v in Q6_K: stacked),
    and the model's weights take the file's tensor bytes, repacked, not float32's."""
    _, path = quantized_file(gguf_file, tmp_path, mix)
    cfg, weights = load_checkpoint(derived(path))
    for matrix in [weights.embed, *weights.matrices()]:
        parts = matrix.parts if isinstance(matrix, StackedWeight) else [matrix]
        assert all(isinstance(part, BlockWeight) for part in parts)
    qkv = weights.layers[0].qkv_w
    if mix == "Q4_K_M":
        assert [p.type_name for p in qkv.parts] == ["Q4_K", "Q6_K"]  # q|k joined, then v
    else:
        assert isinstance(qkv, BlockWeight) and qkv.type_name == mix
    parts = sum(len(m.parts) if isinstance(m, StackedWeight) else 1 for m in weights.matrices())
    formats = matrix_formats(weights)  # what the start-up log names
    assert sum(formats.values()) == parts and set(formats) <= {"Q4_K", "Q6_K", mix}
    tensors = open_gguf(path).tensors.values()
    stored = sum(t.data.nbytes for t in tensors)
    floats = sum(t.data.nbytes for t in tensors if t.is_float)
    block_bytes = stored - floats
    held = weight_bytes(weights) - (weights.embed.nbytes if cfg.tie_word_embeddings else 0)
    assert floats <= held - block_bytes <= floats + (REPACKED[mix] - 1) * block_bytes + 16 * 1024


@pytest.mark.parametrize("model", ["gpt2", "llama3", "llama", "qwen2", "qwen3"])
def test_config_is_the_checkpoints(gguf_file, model):
    """Everything our model reads of config.json, from the file's metadata alone (the end of
    turn ids are the tokenizer's EOS, which the converter keeps; rope scaling as the factors)."""
    hf_dir, path = gguf_file(model)
    ours, want = read_config(derived(path)), read_config(hf_dir)
    skip = {"eos_token_ids", "eos_token_id", "rope_scaling"}
    for field in set(type(want).__dataclass_fields__) - skip:
        assert getattr(ours, field) == getattr(want, field), field
    assert ours.eos_token_ids[0] in want.eos_token_ids


def test_deriving_a_file_removes_the_directories_of_files_gone_or_replaced(gguf_file, tmp_path):
    """One derived directory a file: deriving one removes those whose file is gone and this
    file's earlier versions (another modification time); the others stay."""
    _, path = gguf_file("gpt2")
    cache = tmp_path / "cache"
    kept, gone, changed = (tmp_path / f"{name}.gguf" for name in ("kept", "gone", "changed"))
    for copy in (kept, gone, changed):
        shutil.copy(path, copy)
    first = {copy: gguf_checkpoint_dir(copy, cache) for copy in (kept, gone, changed)}
    assert len(set(first.values())) == 3
    gone.unlink()
    os.utime(changed, ns=(0, 0))
    again = gguf_checkpoint_dir(changed, cache)
    assert again != first[changed]
    assert sorted(cache.iterdir()) == sorted([first[kept], again])
    assert gguf_checkpoint_dir(kept, cache) == first[kept]  # (still derived: nothing rewritten)


def test_float32_tensors_are_the_files_pages(gguf_file):
    """An F32 file's matrices are read in place: memory-mapped, not copied."""
    _, path = gguf_file("qwen3")
    _, weights = load_checkpoint(derived(path))
    assert file_mapping(weights.embed) is not None
    assert file_mapping(weights.layers[0].down_w) is not None


@pytest.mark.parametrize("model", ["gpt2", "llama3"])
def test_greedy_text_through_the_engine_is_transformers(gguf_file, model, caplog):
    """Greedy text equals transformers'; the start-up log names the file's formats."""
    hf_dir, path = gguf_file(model)
    hf = rounded_reference(hf_dir, path)  # (F32: transformers' own)
    prompt = [5, 17, 300, 42, 7]
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                           min_new_tokens=12)[0, len(prompt):].tolist()
    with caplog.at_level(logging.INFO, logger="nanovllm"):
        llm = LLM(str(path), num_kv_blocks=64)
    matrices = 4 * llm.engine.model_config.n_layer + 1  # (an F32 file's: all float32)
    assert f"weights: from the GGUF file, {matrices} float32; " in caplog.text
    out = llm.generate([{"prompt_token_ids": prompt}],
                       SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    assert out[0].outputs[0].token_ids == want


def test_dummy_load_format_takes_the_files_shapes(gguf_file):
    """`--load-format dummy` on a GGUF: its config and tokenizer, random weights."""
    _, path = gguf_file("qwen3")
    llm = LLM(str(path), load_format="dummy", num_kv_blocks=16)
    assert llm.engine.is_dummy
    assert llm.engine.model_config == read_config(derived(path))
