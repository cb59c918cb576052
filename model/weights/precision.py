"""The weight-precision options, with vLLM's names: `dtype` and `quantization` (one definition,
read by EngineConfig, the CLI and the loader; see `model/weights/quant.py` for what they do)."""

from __future__ import annotations

WEIGHT_DTYPES = ("auto", "float32", "bfloat16")  # "auto": float32, the checkpoint's values exactly
# GGML's block formats made from float32 weights at load (`model/weights/block_quant.py`): each
# value and the type it writes.
BLOCK_QUANTIZATIONS = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K"}
# "int8": W8A8, a scale per output channel, per token; the block formats: a scale per 32 (q8_0,
# q4_0) or 256 (q4_k) inputs, activations quantized per block alike.
QUANTIZATIONS = ("int8", *BLOCK_QUANTIZATIONS)


def check_precision(dtype: str, quantization: str | None) -> None:
    """Refuses unknown values, and a quantization together with bfloat16 (the weights are one or
    the other)."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, WEIGHT_DTYPES))}, got {dtype!r}")
    if quantization not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantization must be None or one of "
                         f"{', '.join(map(repr, QUANTIZATIONS))}, got {quantization!r}")
    if quantization and dtype == "bfloat16":
        raise ValueError(f"quantization={quantization!r} stores the weights in {quantization}, "
                         "so dtype='bfloat16' cannot apply too (leave dtype 'auto')")


def precision_name(dtype: str, quantization: str | None) -> str:
    """What the weights are stored as: 'float32', 'bfloat16' or the quantization."""
    return quantization or ("bfloat16" if dtype == "bfloat16" else "float32")
