"""The weight-precision options, with vLLM's names: `dtype` and `quantization` (one definition,
read by EngineConfig, the CLI and the loader; see `model/weights/quant.py` for what they do)."""

from __future__ import annotations

WEIGHT_DTYPES = ("auto", "float32", "bfloat16")  # "auto": float32, the checkpoint's values exactly
QUANTIZATIONS = ("int8",)                        # W8A8: a scale per output channel, per token


def check_precision(dtype: str, quantization: str | None) -> None:
    """Refuses unknown values, and int8 together with bfloat16 (the weights are one or the other)."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, WEIGHT_DTYPES))}, got {dtype!r}")
    if quantization not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantization must be None or one of "
                         f"{', '.join(map(repr, QUANTIZATIONS))}, got {quantization!r}")
    if quantization and dtype == "bfloat16":
        raise ValueError("quantization='int8' stores the weights in int8, so dtype='bfloat16' "
                         "cannot apply too (leave dtype 'auto')")


def precision_name(dtype: str, quantization: str | None) -> str:
    """What the weights are stored as: 'float32', 'bfloat16' or 'int8'."""
    return quantization or ("bfloat16" if dtype == "bfloat16" else "float32")
