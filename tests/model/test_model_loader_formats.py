"""Every accepted checkpoint layout loads to the same model.

Layouts: keys with or without `transformer.`, one file or an index plus shards, the causal-mask
buffers `attn.bias` / `attn.masked_bias` present, a tied `lm_head.weight` present; and the
dtypes F16 and BF16, which load as float32 and must give exactly what an F32 file holding the
same (rounded) values gives.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nanovllm.model import forward, load_gpt2
from nanovllm.model.checkpoint.safetensors_io import file_mapping

IDS = np.array([5, 17, 900, 3, 3, 1023, 0, 42])


def logits(model) -> np.ndarray:
    cfg, weights = model
    return forward(weights, cfg, IDS, np.arange(len(IDS)))


def assert_same_model(a, b) -> None:
    """Same config, bit-identical float32 weights, identical logits."""
    (cfg_a, w_a), (cfg_b, w_b) = a, b
    assert cfg_a == cfg_b
    for name in ("wte", "wpe", "ln_f_g", "ln_f_b"):
        assert getattr(w_b, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(w_a, name), getattr(w_b, name), err_msg=name)
    assert len(w_a.blocks) == len(w_b.blocks)
    for i, (blk_a, blk_b) in enumerate(zip(w_a.blocks, w_b.blocks, strict=True)):
        for field in blk_a.__slots__:
            assert getattr(blk_b, field).dtype == np.float32
            np.testing.assert_array_equal(getattr(blk_a, field), getattr(blk_b, field),
                                          err_msg=f"block {i} {field}")
    np.testing.assert_array_equal(logits(a), logits(b))


def mask_buffers(n_layer: int, n_positions: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """The buffers older transformers versions saved next to the parameters."""
    causal = np.tril(np.ones((n_positions, n_positions))).astype(dtype)[None, None]
    out = {}
    for i in range(n_layer):
        out[f"h.{i}.attn.bias"] = causal
        out[f"h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    return out


def prefixed(tensors: dict) -> dict:
    return {f"transformer.{k}": v for k, v in tensors.items()}


def test_tiny_checkpoint_loads_with_its_config(tiny_model):
    cfg, weights = tiny_model
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions) == (2, 64, 4, 1024, 256)
    assert len(weights.blocks) == 2
    assert weights.wte.shape == (1024, 64) and weights.wpe.shape == (256, 64)


def test_loaded_arrays_are_plain_ndarrays_still_mapped_from_the_file(tiny_model):
    """No np.memmap reaches the kernels (numba types an ndarray subclass on a slow path, on every
    call), yet the tensors read in place are still views of the file mapping, so that
    `release_pages` finds it for the ones the loader copies."""
    _, weights = tiny_model
    arrays = [weights.wpe, weights.ln_f_g, weights.ln_f_b]
    for blk in weights.blocks:
        arrays += [getattr(blk, name) for name in blk.__slots__ if name.startswith("ln_")
                   or name.endswith("_b")]
    assert all(type(a) is np.ndarray for a in arrays)
    assert all(file_mapping(a) is not None for a in arrays)
    assert file_mapping(np.ones(3)) is None


def test_unprefixed_rewrite_is_the_same_model(tiny_model, tiny_tensors, write_checkpoint):
    assert_same_model(tiny_model, load_gpt2(write_checkpoint(tiny_tensors)))


def test_transformer_prefixed_keys(tiny_model, tiny_tensors, write_checkpoint):
    assert_same_model(tiny_model, load_gpt2(write_checkpoint(prefixed(tiny_tensors))))


@pytest.mark.parametrize("prefix", [False, True])
def test_two_shards_with_an_index(tiny_model, tiny_tensors, write_checkpoint, prefix):
    tensors = prefixed(tiny_tensors) if prefix else tiny_tensors
    ckpt = write_checkpoint(tensors, shards=2)
    assert not (ckpt / "model.safetensors").exists()
    assert len(list(ckpt.glob("model-0000?-of-00002.safetensors"))) == 2
    assert_same_model(tiny_model, load_gpt2(ckpt))


def test_causal_mask_buffers_are_ignored(tiny_model, tiny_tensors, write_checkpoint):
    ckpt = write_checkpoint({**tiny_tensors, **mask_buffers(2, 256)})
    assert_same_model(tiny_model, load_gpt2(ckpt))


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_])
def test_integer_or_bool_causal_mask_buffers_are_ignored(tiny_model, tiny_tensors,
                                                         write_checkpoint, dtype):
    ckpt = write_checkpoint({**tiny_tensors, **mask_buffers(2, 256, dtype)})
    assert_same_model(tiny_model, load_gpt2(ckpt))


def test_tied_lm_head_weight(tiny_model, tiny_tensors, write_checkpoint):
    ckpt = write_checkpoint({**tiny_tensors, "lm_head.weight": tiny_tensors["wte.weight"].copy()})
    assert_same_model(tiny_model, load_gpt2(ckpt))


def test_all_variants_at_once(tiny_model, tiny_tensors, write_checkpoint):
    """Prefixed keys + mask buffers + tied lm_head.weight, spread over two shards."""
    tensors = {**prefixed({**tiny_tensors, **mask_buffers(2, 256)}),
               "lm_head.weight": tiny_tensors["wte.weight"]}
    assert_same_model(tiny_model, load_gpt2(write_checkpoint(tensors, shards=2)))


def stored_dtypes(path) -> set[str]:
    """The dtypes a safetensors file's header declares."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {info["dtype"] for name, info in header.items() if name != "__metadata__"}


@pytest.mark.parametrize("dtype, tag", [(torch.float16, "F16"), (torch.bfloat16, "BF16")])
def test_half_precision_file_equals_f32_file_of_the_rounded_values(tiny_tensors, write_checkpoint,
                                                                   dtype, tag):
    half = {k: torch.from_numpy(v).to(dtype) for k, v in tiny_tensors.items()}
    rounded = {k: v.to(torch.float32).numpy() for k, v in half.items()}
    assert any(not np.array_equal(rounded[k], tiny_tensors[k]) for k in rounded), "no rounding?"
    half_ckpt = write_checkpoint(half, name="half")
    f32_ckpt = write_checkpoint(rounded, name="f32")
    assert stored_dtypes(half_ckpt / "model.safetensors") == {tag}
    assert_same_model(load_gpt2(f32_ckpt), load_gpt2(half_ckpt))


def test_f16_written_with_safetensors_numpy(tiny_tensors, write_checkpoint):
    half = {k: v.astype(np.float16) for k, v in tiny_tensors.items()}
    rounded = {k: v.astype(np.float32) for k, v in half.items()}
    f16_ckpt = write_checkpoint(half, name="f16")
    assert stored_dtypes(f16_ckpt / "model.safetensors") == {"F16"}
    assert_same_model(load_gpt2(write_checkpoint(rounded, name="f32")), load_gpt2(f16_ckpt))


def test_mixed_dtypes_in_one_file(tiny_tensors, write_checkpoint):
    """F32, F16 and BF16 tensors side by side in one file."""
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    mixed = {k: torch.from_numpy(v).to(dtypes[i % 3]) for i, (k, v) in enumerate(tiny_tensors.items())}
    rounded = {k: v.to(torch.float32).numpy() for k, v in mixed.items()}
    mixed_ckpt = write_checkpoint(mixed, name="mixed")
    assert stored_dtypes(mixed_ckpt / "model.safetensors") == {"F32", "F16", "BF16"}
    assert_same_model(load_gpt2(write_checkpoint(rounded, name="f32")), load_gpt2(mixed_ckpt))


def test_bf16_values_decode_exactly(tiny_tensors, write_checkpoint):
    """Signed zero, tiny and huge values decode exactly as torch decodes bfloat16."""
    special = np.array([0.0, -0.0, 1.0, -2.5, 3.0e38, -1.0e-38, 0.0078125, 65504.0], np.float32)
    tensors = dict(tiny_tensors)
    tensors["ln_f.bias"] = np.resize(special, tensors["ln_f.bias"].shape)
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}
    _, weights = load_gpt2(write_checkpoint(bf16))
    expected = bf16["ln_f.bias"].to(torch.float32).numpy()
    np.testing.assert_array_equal(weights.ln_f_b, expected)
    assert np.signbit(weights.ln_f_b[1])
