"""`NUMBA_DISABLE_JIT=1` runs the whole engine on the kernels' plain-Python bodies (slowly), so a
debugger can step through every kernel: its greedy tokens are the compiled run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from nanovllm import LLM, SamplingParams
from nanovllm.model.kernels.shared import (
    float16_bits_to_float32,
    float32_to_float16_bits,
    from_float32,
    to_float32,
)

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [900, 8]]
PARAMS = dict(max_tokens=4, ignore_eos=True)
# KV cache dtypes, and weights in int8 and bfloat16 (their widening helpers run as Python too)
OPTIONS = ({}, {"kv_cache_dtype": "float16"}, {"quantization": "int8"}, {"dtype": "bfloat16"})

# Run in a fresh interpreter: numba reads NUMBA_DISABLE_JIT once, when it is first imported.
SCRIPT = f"""
import json, sys
import numba
assert numba.config.DISABLE_JIT, "the JIT is still on"
from nanovllm import LLM, SamplingParams
tokens = []
for options in {OPTIONS!r}:
    llm = LLM(sys.argv[1], num_kv_blocks=16, **options)
    outs = llm.generate({PROMPTS!r}, SamplingParams(**{PARAMS!r}), use_tqdm=False)
    tokens.append([o.outputs[0].token_ids for o in outs])
print(json.dumps(tokens))
"""


def test_generation_without_the_jit_gives_the_compiled_runs_tokens(tiny_ckpt):
    compiled = []
    for options in OPTIONS:
        llm = LLM(str(tiny_ckpt), num_kv_blocks=16, **options)
        outs = llm.generate(PROMPTS, SamplingParams(**PARAMS), use_tqdm=False)
        compiled.append([o.outputs[0].token_ids for o in outs])
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_ckpt)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1]) == compiled
    assert all(len(ids) == PARAMS["max_tokens"] for ids in compiled[0])


def test_float16_helpers_work_as_plain_python_too():
    """What NUMBA_DISABLE_JIT runs: the Python bodies, on numpy scalars, exactly as compiled."""
    rng = np.random.default_rng(0)
    halves = rng.integers(0, 2**16, 3000, dtype=np.uint64).astype(np.uint16)
    halves = halves[np.isfinite(halves.view(np.float16))]
    for bits in halves:
        widened = to_float32(bits)
        assert widened == float16_bits_to_float32.py_func(bits) == float16_bits_to_float32(bits)
        assert widened == np.float32(bits.view(np.float16))
    cache = np.zeros(1, np.uint16)
    for x in rng.standard_normal(3000).astype(np.float32) * 10.0 ** rng.integers(-8, 6, 3000):
        x = np.float32(x)
        assert from_float32(x, cache) == float32_to_float16_bits.py_func(x) \
            == float32_to_float16_bits(x)
    assert from_float32(np.float32(1.5), np.zeros(1, np.float32)) == np.float32(1.5)
