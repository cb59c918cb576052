"""Which kernels a model's forward pass runs, so that start-up compiles those and no others.

numba compiles a kernel for each argument signature the first time it is called, minutes for
all of them on a cold cache. Start-up compiles (or loads from numba's cache) the signatures the
engine's first steps call: float32 always (embeddings, biases, the LM head), bfloat16 or int8
only where the weights hold such matrices, a float16 KV cache's only for one. Anything else (a
precision this model does not use) is compiled when first called, as numba always does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from nanovllm.model.platform.cpu import kernel_path
from nanovllm.model.weights.block_quant import BlockWeight
from nanovllm.model.weights.quant import BF16Weight, Int8Weight, PackedBF16Weight

# Matrices counted whole, not walked into as the other dataclasses are.
WHOLE = (BF16Weight, PackedBF16Weight, Int8Weight, BlockWeight)

logger = logging.getLogger("nanovllm")


@dataclass(frozen=True, slots=True)
class KernelNeeds:
    bf16_packed: bool = False    # bfloat16 matrices on the avx512bf16 kernel (rounded rows)
    bf16_widened: bool = False   # bfloat16 matrices widened to float32 as they are multiplied
    int8: bool = False           # W8A8 matrices
    float16_cache: bool = False  # a float16 KV cache (float32 is always compiled)
    heads: tuple[int, int, int] = (1, 1, 1)  # query heads, key/value heads, head size: what
    # decides decode attention's way of reading the cache (one of two kernels)
    block_types: tuple[str, ...] = ()  # the block-quantized matrices' types (a GGUF file's),
    # each multiplied by a kernel of its own

    def log(self, group: str, precision: str = "float32") -> None:
        """One line saying what start-up waits for (a newcomer's first start compiles)."""
        logger.info("compiling %s %s kernels for %s (loaded from numba's cache once compiled)",
                    precision, group, kernel_path().name)


def kernel_needs(weights, cache_dtype: str = "float32", cfg=None) -> KernelNeeds:
    """What `weights` (any architecture's dataclass of them) and a `cache_dtype` KV cache run,
    with the attention heads of `cfg` (a ModelConfig) if given."""
    found = matrices(weights)
    kinds = {type(m) for m in found}
    heads = (cfg.n_head, cfg.num_kv_heads, cfg.head_dim) if cfg is not None else (1, 1, 1)
    return KernelNeeds(bf16_packed=PackedBF16Weight in kinds, bf16_widened=BF16Weight in kinds,
                       int8=Int8Weight in kinds, float16_cache=cache_dtype == "float16",
                       heads=heads, block_types=tuple(sorted(
                           {m.type_name for m in found if isinstance(m, BlockWeight)})))


def matrices(value) -> list:
    """Everything `value` holds, through dataclasses, lists and tuples (a `WHOLE` matrix as
    itself)."""
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in matrices(v)]
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, WHOLE):
        return [m for f in fields(value) for m in matrices(getattr(value, f.name))]
    return [value]
