"""Engine options, with vLLM's names. Each is defined once, here: its default, its help and its
choices make both the dataclass and the command-line flag (`add_engine_args`)."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from nanovllm.model.weights.precision import QUANTIZATIONS, WEIGHT_DTYPES, check_precision
from nanovllm.runner.kv_cache import KV_CACHE_DTYPES
from nanovllm.scheduling_policy import SCHEDULING_POLICIES
from nanovllm.values.speculative import SpeculativeConfig

DEFAULT_KV_CACHE_BYTES = 1 << 30  # 1 GiB: ~14,500 tokens of GPT-2 124M context
LOAD_FORMATS = ("auto", "safetensors", "dummy")
KV_CACHE_DTYPE_CHOICES = ("auto", *KV_CACHE_DTYPES)  # "auto": `kv_cache_dtype_of`
RUNNERS = ("auto", "generate", "pooling")


def option(default, help: str, choices=None, flag_type=None):
    """A field that is also a flag: `--name-with-dashes`, documented by `help` (its value
    parsed as `flag_type`, by default the field's type)."""
    return field(default=default, metadata={"help": help, "choices": choices,
                                            "flag_type": flag_type})


@dataclass(slots=True)
class EngineConfig:
    model: str  # positional on the command line: a checkpoint directory, a .gguf file or a hub name
    load_format: str = option(
        "auto", "'dummy': random weights with the real shapes (no download)", LOAD_FORMATS)
    block_size: int = option(16, "tokens per KV block")
    max_num_seqs: int = option(256, "sequences per step, at most")
    max_num_batched_tokens: int = option(
        2048, "tokens per step, at most (long prompts are prefilled in chunks)")
    max_waiting_seqs: int = option(
        4096, "sequences waiting to be admitted, at most: a request whose samples would queue "
              "more is refused at once (QueueFullError; HTTP 429 with Retry-After)")
    scheduling_policy: str = option(
        "fcfs", "'priority': requests with a lower `priority` are admitted first and preempted "
                "last (fair among equals); 'fcfs': every request equal, and a non-zero "
                "`priority` is refused", SCHEDULING_POLICIES)
    runner: str = option(
        "auto", "'pooling': serve the model for embeddings (a decoder pools its last token); "
                "'auto': an encoder (BERT) pools, and a decoder saved by sentence-transformers (its "
                "modules.json has a Pooling module); any other decoder generates", RUNNERS)
    max_model_len: int | None = option(None, "context length (default: the model's n_positions)")
    enable_prefix_caching: bool = option(True, "reuse the KV blocks of shared prompt prefixes")
    prefix_cache_dir: str | None = option(
        None, "also keep the prefix cache's blocks in this directory, found again after a "
              "restart and shared by every server using it (docs/operations.md)")
    prefix_cache_dir_max_gb: float = option(
        10.0, "the prefix cache directory's size bound in GiB: least recently used blocks go first")
    seed: int = option(0, "seed of unseeded requests' sampling")
    kv_cache_memory_bytes: int | None = option(
        None, f"KV pool size in bytes (default: {DEFAULT_KV_CACHE_BYTES})")
    num_kv_blocks: int | None = option(
        None, "KV pool size in blocks (overrides --kv-cache-memory-bytes)")
    kv_cache_dtype: str = option(
        "auto", "'float32': exact; 'float16': half the memory per token and faster decode "
                "attention, K/V rounded to float16; 'auto': float16 under bfloat16 or "
                "block-quantized weights (as vLLM keeps a 16-bit model's cache in 16 bits and "
                "llama.cpp a GGUF file's), else float32",
        KV_CACHE_DTYPE_CHOICES)
    tokenizer: str | None = option(None, "tokenizer directory (default: the model's)")
    revision: str | None = option(None, "hub revision to download")
    allow_dummy_fallback: bool = option(
        False, "if the hub is unreachable, load a preset name (gpt2, ...) with random weights "
               "instead of failing; says so in one line")
    dtype: str = option(
        "auto", "weights: 'auto' = float32, exact; 'bfloat16': half the bytes (sums stay float32)",
        WEIGHT_DTYPES)
    quantization: str | None = option(
        None, "'int8': W8A8, int8 weights (a float32 scale per output channel, a quarter of "
              "the bytes) times activations quantized to int8 per token; 'q8_0', 'q4_0', "
              "'q4_k': llama.cpp's block formats (8.5, 4.5, 4.5 bits a weight) times "
              "activations quantized to int8 per block; the KV cache stays as it is",
        QUANTIZATIONS)
    speculative_config: SpeculativeConfig | dict | str | None = option(
        None, "speculative decoding, vLLM's JSON: '{\"method\": \"ngram\", "
              "\"num_speculative_tokens\": 4, \"prompt_lookup_max\": 4}' or '{\"model\": "
              "\"DRAFT_DIR\", \"num_speculative_tokens\": 4, \"quantization\": \"int8\"}'",
        flag_type=str)
    enable_lora: bool = option(
        False, "serve LoRA adapters (PEFT's) on the base model, chosen per request")
    max_loras: int = option(8, "LoRA adapters loaded at once, at most (with --enable-lora)")
    max_lora_rank: int = option(16, "the highest LoRA rank an adapter may have")
    max_cpu_loras: int | None = option(
        None, "vLLM's bound on adapters cached in host memory: every loaded adapter is there "
              "already, so at least --max-loras (default: --max-loras)")

    def __post_init__(self):
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(map(repr, choices))}, "
                                 f"got {value!r}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_waiting_seqs"):
            _positive(name, getattr(self, name))
        _positive("max_loras", self.max_loras)
        _positive("max_lora_rank", self.max_lora_rank)
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras "
                             f"({self.max_loras})")
        for name in ("max_model_len", "kv_cache_memory_bytes", "num_kv_blocks"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        check_precision(self.dtype, self.quantization)  # int8 and bfloat16 exclude each other
        if not self.prefix_cache_dir_max_gb > 0:
            raise ValueError(f"prefix_cache_dir_max_gb must be positive, got "
                             f"{self.prefix_cache_dir_max_gb!r}")
        if self.prefix_cache_dir is not None and not self.enable_prefix_caching:
            raise ValueError("prefix_cache_dir keeps the prefix cache's blocks: it needs "
                             "enable_prefix_caching")
        if self.speculative_config is not None:
            self.speculative_config = SpeculativeConfig.parse(self.speculative_config)

    @classmethod
    def from_cli_args(cls, model: str, args: argparse.Namespace) -> EngineConfig:
        return cls(model=model, **{f.name: getattr(args, f.name) for f in fields(cls)
                                   if f.name != "model" and hasattr(args, f.name)})


def kv_cache_dtype_of(kv_cache_dtype: str, dtype: str, block_weights: bool = False) -> str:
    """The KV cache's storage type ('float32' or 'float16') for the option's value under weights
    of `dtype`, `block_weights` if any are block-quantized (a GGUF file's types, or
    `--quantization q4_0 | q4_k | q8_0`): 'auto' is float16 under either, whose own rounding is
    coarser than float16's (decode attention then reads half the bytes; llama.cpp's cache is
    float16 by default on the same files), else float32."""
    if kv_cache_dtype != "auto":
        return kv_cache_dtype
    return "float16" if dtype == "bfloat16" or block_weights else "float32"


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """One flag per EngineConfig option (all but `model`, which each command adds itself)."""
    group = parser.add_argument_group("engine")
    hints = typing.get_type_hints(EngineConfig)
    for f in fields(EngineConfig):
        if f.default is MISSING:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.metadata["flag_type"] or _scalar(hints[f.name])
        help = f.metadata["help"] + ("" if f.default is None else " (default: %(default)s)")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help)
        else:
            group.add_argument(flag, type=kind, default=f.default, choices=f.metadata["choices"],
                               help=help)


def _scalar(hint) -> type:
    """int from `int | None`, str from `str`."""
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint
