"""The kernel path: named from the CPU's features, the host's in this process, and the portable
one forced with NUMBA_CPU_NAME=generic, whose kernels are checked against the reference too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanovllm import LLM, SamplingParams
from nanovllm.model.platform.cpu import kernel_path, path_for

ZEN4 = {"sse4.1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni",
        "avx512bf16", "sha"}


def test_paths_are_named_by_the_widest_vectors():
    assert path_for("znver4", ZEN4).name == "avx512"
    assert path_for("znver1", {"sse4.1", "avx", "avx2", "fma", "f16c"}).name == "avx2"
    assert path_for("sandybridge", {"sse4.1", "avx"}).name == "avx"
    assert path_for("x86-64", set()).name == "generic"
    assert path_for("generic", ZEN4).name == "generic"  # numba's override wins


def test_description_is_one_line_naming_the_int8_and_bfloat16_kernels():
    line = path_for("znver4", ZEN4).describe()
    assert "\n" not in line and line.startswith("kernels: avx512 path (numba compiles for znver4")
    assert "int8 dot products: avx512vnni" in line and "sha" not in line
    assert line.endswith("; bfloat16 dot products: avx512bf16 (linear layers, prefill attention)")
    zen3 = path_for("znver1", {"avx2", "fma"}).describe()
    assert zen3.endswith("int8 dot products: avx2; block-quantized: portable; "
                         "bfloat16 dot products: widen (linear layers)")
    assert path_for("generic", set()).int8 == "portable"
    assert path_for("generic", set()).bf16 == "widen"


def test_one_row_block_products_read_ahead_by_the_cpus_maker():
    """Non-temporal requests on AMD's cores; Intel's take those into L1 alone, too few lines
    on their way for the memory's speed, so there into L2."""
    zen5 = path_for("znver5", ZEN4)
    assert zen5.read_ahead == "non-temporally"
    assert "block-quantized: avx512vnni (one row reads ahead non-temporally)" in zen5.describe()
    for intel in ("emeraldrapids", "sapphirerapids", "icelake-server", "rocketlake", "alderlake"):
        assert path_for(intel, ZEN4).read_ahead == "into L2"


def test_block_products_take_amx_tiles_where_the_cpu_has_them():
    sapphire = path_for("sapphirerapids", ZEN4 | {"amx-tile", "amx-bf16"})
    assert sapphire.block == "amx"
    assert ("block-quantized: amx for many rows, avx512vnni for few (one row reads ahead into "
            "L2)") in sapphire.describe()
    assert path_for("sapphirerapids", ZEN4 | {"amx-tile"}).block == "avx512vnni"


def cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


def test_host_path_matches_the_kernels_cpu_flags():
    """What llvmlite reports agrees with the kernel's view of this CPU (/proc/cpuinfo)."""
    flags, path = cpuinfo_flags(), kernel_path()
    expected = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else path.name
    assert path.name == expected
    assert ("avx512bf16" in path.features) == ("avx512_bf16" in flags)
    assert ("fma" in path.features) == ("fma" in flags)


# Run in a fresh interpreter: numba reads NUMBA_CPU_NAME once, when it is first imported.
GENERIC_SCRIPT = """
import json, sys
import numpy as np
from nanovllm import LLM, SamplingParams
from nanovllm.model.architectures import gpt2_reference as ref
from nanovllm.model.layers.attention import paged_decode_attention
from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model.kernels.shared import as_kernel_array
from nanovllm.model.layers.linear import linear
from nanovllm.model.weights.quant import dequantize, quantize_int8, to_bfloat16
rng = np.random.default_rng(0)
errors = {}
for name, convert in (("float32", lambda w: w), ("int8", quantize_int8), ("bfloat16", to_bfloat16)):
    for rows in (1, 7, 70):
        x = rng.standard_normal((rows, 300), dtype=np.float32)
        w = convert(rng.standard_normal((129, 300), dtype=np.float32))
        if name == "int8":  # W8A8: the activations are quantized per row too
            x = dequantize(quantize_int8(x))
        expected = ref.linear(x, dequantize(w))
        scale = np.abs(x) @ np.abs(dequantize(w)).T
        errors[f"{name} {rows}"] = float((np.abs(linear(x, w) - expected) / scale).max())
for dtype in ("float32", "float16"):  # the register tiles: no F16C here to widen float16 with
    k, v = (rng.standard_normal((64, 3, 64)).astype(dtype) for _ in range(2))
    q = rng.standard_normal((1, 3, 64), dtype=np.float32)
    out = np.empty_like(q)
    paged_decode_attention(q, as_kernel_array(k), as_kernel_array(v), np.arange(4)[None],
                           np.array([64]), 16, out, 0, 1, True)
    scores = np.einsum("hd,thd->ht", q[0], k.astype(np.float64)) / np.sqrt(64)
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    expected = np.einsum("ht,thd->hd", p / p.sum(axis=1, keepdims=True), v.astype(np.float64))
    errors[f"tiles {dtype}"] = float(np.abs(out[0] - expected).max())  # |v| ~ 1
tokens = {}
for options in ({}, {"quantization": "int8"}, {"dtype": "bfloat16"}):
    llm = LLM(sys.argv[1], num_kv_blocks=16, **options)
    outs = llm.generate([[1, 2, 3, 4, 5, 6, 7], [900, 8]],
                        SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    tokens[json.dumps(options)] = [o.outputs[0].token_ids for o in outs]
from nanovllm.model.layers.linear import host_bf16_kernel
print(json.dumps({"path": kernel_path().name, "int8": kernel_path().int8,
                  "bf16": host_bf16_kernel(), "errors": errors, "tokens": tokens}))
"""


@pytest.mark.slow  # compiles every kernel a second time, for the generic CPU
def test_forced_generic_path_runs_every_precision(tiny_ckpt):
    """NUMBA_CPU_NAME=generic: baseline x86-64 kernels (the linear layers in every precision,
    bfloat16 widened to float32; decode attention's register tiles on float32 and float16
    caches), within float32 rounding of the reference, and the engine's greedy tokens are the
    host path's (whose bfloat16 kernel may round the activations too)."""
    env = {**os.environ, "NUMBA_CPU_NAME": "generic"}
    run = subprocess.run([sys.executable, "-c", GENERIC_SCRIPT, str(tiny_ckpt)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["path"] == "generic" and result["int8"] == "portable"
    assert result["bf16"] == "widen"
    assert len(result["errors"]) == 11
    assert max(result["errors"].values()) < 1e-5, result["errors"]  # ~ sqrt(300) * 2**-24 * 8
    for options, generic_tokens in result["tokens"].items():
        llm = LLM(str(tiny_ckpt), num_kv_blocks=16, **json.loads(options))
        outs = llm.generate([[1, 2, 3, 4, 5, 6, 7], [900, 8]],
                            SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
        assert [o.outputs[0].token_ids for o in outs] == generic_tokens, options


AVX2_SCRIPT = """
import json
import numpy as np
from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model.kernels.shared import NO_BIAS
from nanovllm.model.layers.linear import host_has_panels, host_packs_float32, linear, matmul_packed
from nanovllm.model.weights.quant import pack_float32
rng = np.random.default_rng(0)
errors = {}
for rows in (1, 20, 64):
    x = rng.standard_normal((rows, 300), dtype=np.float32)
    w = rng.standard_normal((129, 300), dtype=np.float32)
    expected = x.astype(np.float64) @ w.T.astype(np.float64)
    scale = np.abs(x) @ np.abs(w).T
    packed = np.empty((rows, 129), np.float32)
    # not this path's choice, but it must run here too
    matmul_packed(x, pack_float32(w), packed, NO_BIAS, False)
    for name, out in (("linear", linear(x, w)), ("packed", packed)):
        errors[f"{name} {rows}"] = float((np.abs(out - expected) / scale).max())
print(json.dumps({"path": kernel_path().name, "panels": host_has_panels(),
                  "packs": host_packs_float32(), "errors": errors}))
"""


def test_forced_avx2_path_runs_the_float32_kernels():
    """NUMBA_CPU_NAME=haswell on an AVX-512 host: the AVX2 path (16 vector registers) keeps the
    dot-product kernel and `[out, in]` weights; the packed kernel, which LLVM then splits into
    8-lane vectors, is still correct there."""
    if "avx2" not in cpuinfo_flags():
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell",
           "NUMBA_CPU_FEATURES": "+sse4.1,+avx,+avx2,+fma,+f16c"}
    run = subprocess.run([sys.executable, "-c", AVX2_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["path"] == "avx2" and result["panels"] is False and result["packs"] is False
    assert len(result["errors"]) == 6
    assert max(result["errors"].values()) < 1e-5, result["errors"]


def test_linear_takes_the_panel_kernel_on_the_avx512_path_only():
    from numba import config

    from nanovllm.model.layers.linear import PANEL_PATHS, host_has_panels

    assert PANEL_PATHS == ("avx512",)
    assert host_has_panels() == (kernel_path().name == "avx512" and not config.DISABLE_JIT)


def test_prefill_attention_takes_the_tiles_of_its_paths_vectors():
    """16-lane tiles on the AVX-512 path, 8-lane ones on AVX2's, the plain loops elsewhere and
    under NUMBA_DISABLE_JIT."""
    from numba import config

    from nanovllm.model.layers.attention import host_tile_lanes

    lanes = {"avx512": 16, "avx2": 8}.get(kernel_path().name, 0)
    assert host_tile_lanes() == (0 if config.DISABLE_JIT else lanes)


def test_decode_attention_takes_the_register_tiles_where_they_fit_the_registers():
    """GPT-2's one query head per key/value head fits a tile in AVX2's registers too; grouped
    heads' tiles only in AVX-512's (the panel path); none under NUMBA_DISABLE_JIT."""
    from numba import config

    from nanovllm.model.layers.attention import host_decode_tiles

    compiled = not config.DISABLE_JIT
    assert host_decode_tiles(12, 12) is compiled
    assert host_decode_tiles(9, 3) is (compiled and kernel_path().name == "avx512")


def test_engine_packs_float32_weights_on_the_avx512_path_only(tiny_ckpt):
    import numpy as np
    from numba import config

    from nanovllm.config import EngineConfig
    from nanovllm.model.weights.quant import PackedF32Weight
    from nanovllm.model_loading import load_model

    packs = kernel_path().name == "avx512" and not config.DISABLE_JIT
    weights = load_model(EngineConfig(str(tiny_ckpt))).weights
    for w in (weights.wte, weights.blocks[0].attn_w, weights.blocks[-1].fc_proj_w):
        assert isinstance(w, PackedF32Weight) == packs
        assert isinstance(w, np.ndarray) != packs
    assert isinstance(weights.wpe, np.ndarray)  # (looked up by position, not a linear layer)


def test_engine_packs_bfloat16_weights_where_the_kernel_runs(tiny_ckpt):
    """The loader packs bfloat16 matrices for the kernel where it runs (GPT-2's embedding, its LM
    head, too), and leaves them `[out, in]` for `matmul_nt` elsewhere; a float32 model's
    matrices are never bfloat16."""
    from nanovllm.config import EngineConfig
    from nanovllm.model.layers.linear import host_packs_bfloat16
    from nanovllm.model.weights.quant import BF16Weight, PackedBF16Weight
    from nanovllm.model_loading import load_model

    kind = PackedBF16Weight if host_packs_bfloat16() else BF16Weight
    weights = load_model(EngineConfig(str(tiny_ckpt), dtype="bfloat16")).weights
    for w in (weights.wte, weights.blocks[0].attn_w, weights.blocks[-1].fc_proj_w):
        assert isinstance(w, kind)
    plain = load_model(EngineConfig(str(tiny_ckpt))).weights
    assert not isinstance(plain.wte, PackedBF16Weight | BF16Weight)
