"""Engine options, with vLLM's names, and the command-line flags that set them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields

from nanovllm.model.precision import QUANTIZATIONS, WEIGHT_DTYPES, check_precision
from nanovllm.runner.kv_cache import KV_CACHE_DTYPES

DEFAULT_KV_CACHE_BYTES = 1 << 30  # 1 GiB: ~14,500 tokens of GPT-2 124M context


@dataclass(slots=True)
class EngineConfig:
    model: str
    load_format: str = "auto"            # "auto": real weights; "dummy": random, real shapes
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None     # default: the model's n_positions
    enable_prefix_caching: bool = True
    seed: int = 0
    kv_cache_memory_bytes: int | None = None
    num_kv_blocks: int | None = None     # overrides kv_cache_memory_bytes
    kv_cache_dtype: str = "auto"         # "auto" = "float32" (exact) or "float16" (half the memory)
    tokenizer: str | None = None         # a tokenizer directory other than the model's
    revision: str | None = None          # hub revision when the model is downloaded
    allow_dummy_fallback: bool = False   # a preset the hub cannot deliver: random weights instead
    dtype: str = field(default="auto", metadata={
        "choices": list(WEIGHT_DTYPES),
        "help": "weights: 'auto' = float32, exact; 'bfloat16': half the bytes (sums stay float32)"})
    quantization: str | None = field(default=None, metadata={
        "choices": list(QUANTIZATIONS),
        "help": "'int8': weight-only int8, a float32 scale per output channel, a quarter of the "
                "bytes (activations and the KV cache stay as they are)"})

    def __post_init__(self):
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError(f"load_format must be 'auto', 'safetensors' or 'dummy', "
                             f"got {self.load_format!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(map(repr, KV_CACHE_DTYPES))}, "
                             f"got {self.kv_cache_dtype!r}")
        check_precision(self.dtype, self.quantization)
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            _positive(name, getattr(self, name))
        for name in ("max_model_len", "kv_cache_memory_bytes", "num_kv_blocks"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))

    @classmethod
    def from_cli_args(cls, model: str, args: argparse.Namespace) -> EngineConfig:
        return cls(model=model, **{f.name: getattr(args, f.name) for f in fields(cls)
                                   if f.name != "model" and hasattr(args, f.name)})


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--load-format", choices=["auto", "safetensors", "dummy"], default="auto",
                   help="'dummy': random weights with the real shapes (no download)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    g.add_argument("--max-num-seqs", type=int, default=256, help="sequences per step, at most")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="tokens per step, at most (long prompts are prefilled in chunks)")
    g.add_argument("--max-model-len", type=int, default=None, help="context length (default: model's)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--seed", type=int, default=0, help="seed of unseeded requests' sampling")
    g.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                   help=f"KV pool size in bytes (default {DEFAULT_KV_CACHE_BYTES})")
    g.add_argument("--num-kv-blocks", type=int, default=None, help="KV pool size in blocks")
    g.add_argument("--kv-cache-dtype", choices=list(KV_CACHE_DTYPES), default="auto",
                   help="'auto': float32, exact; 'float16': half the memory per token and faster "
                        "decode attention, K/V rounded to float16")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    g.add_argument("--revision", default=None, help="hub revision to download")
    g.add_argument("--allow-dummy-fallback", action=argparse.BooleanOptionalAction, default=False,
                   help="if the hub is unreachable, load a preset name (gpt2, ...) with random "
                        "weights instead of failing; says so in one line")
    for name in ("dtype", "quantization"):
        spec = EngineConfig.__dataclass_fields__[name]
        g.add_argument(f"--{name}", default=spec.default, **spec.metadata)
