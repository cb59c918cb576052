"""Reading a GGUF file (llama.cpp's format), memory-mapped: its header (`gguf_header.py`), and
each tensor a view of the file.

A GGUF is a header of typed metadata (`general.architecture`, `llama.block_count`, the
tokenizer's `tokenizer.ggml.*`, ...) and a list of tensors, each a name, a type (F32, F16, BF16
or a block-quantized type such as Q4_K) and its dims innermost-first: a matrix of GGUF shape
(in, out) is the numpy array (out, in), `[out, in]` as our `linear` reads it.

`open_gguf` refuses, each with one line naming the file (and the tensor or type), a file that
is not a GGUF, a truncated one, and one holding a tensor type we cannot run; nothing is read
beyond the header until a tensor is asked for, and then only that tensor's pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanovllm.model.checkpoint.gguf_header import HeaderError, TensorInfo, read_header
from nanovllm.model.checkpoint.safetensors_io import CheckpointError

GGUF_MAGIC = b"GGUF"
FLOAT_TYPES = ("F32", "F16", "BF16")
# The block-quantized types a Q4_K_M / Q5_K_M / Q6_K / Q8_0 / Q4_0 file holds.
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_TYPES = FLOAT_TYPES + BLOCK_TYPES


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    type_name: str          # "F32", "BF16", "Q4_K", ...
    shape: tuple[int, ...]  # numpy order, outermost first: (out, in) for a matrix
    data: np.ndarray        # a view of the file: float32/float16/uint16 of `shape`, or for a
                            # block type uint8 [rows, bytes per row], as stored

    @property
    def is_float(self) -> bool:
        return self.type_name in FLOAT_TYPES


@dataclass(frozen=True, slots=True)
class GGUFFile:
    path: Path
    metadata: dict           # key -> int, float, bool, str, or a list of them
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a file that starts as a GGUF does."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def open_gguf(path: str | Path) -> GGUFFile:
    """The file's metadata and its tensors as views of the mapped file (see the module's doc)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from e
    if head != GGUF_MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with 'GGUF'); "
                              "nanovllm loads GGUF files and safetensors checkpoint directories")
    try:
        header = read_header(path)
    except (HeaderError, UnicodeDecodeError, OverflowError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt GGUF file of {size} bytes "
                              f"({' '.join(str(e).split())})") from e
    data = np.memmap(path, mode="r")
    tensors = {t.name: _tensor(path, t, data) for t in header.tensors}
    return GGUFFile(path, header.metadata, tensors)


def _tensor(path: Path, t: TensorInfo, data: np.memmap) -> GGUFTensor:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        type_name = GGMLQuantizationType(t.type_code).name
    except ValueError:
        type_name = f"type {t.type_code}"
    if type_name not in SUPPORTED_TYPES:
        raise CheckpointError(f"{path}: tensor {t.name} is {type_name}, a type nanovllm does not "
                              f"run; supported: {', '.join(SUPPORTED_TYPES)}")
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    shape = tuple(int(d) for d in reversed(t.dims))
    inner = shape[-1] // block * block_bytes  # bytes of one row
    n_bytes = int(np.prod(shape[:-1], dtype=np.int64)) * inner
    if t.offset + n_bytes > data.size:
        raise CheckpointError(f"{path}: truncated: tensor {t.name} ends at byte "
                              f"{t.offset + n_bytes}, but the file has {data.size}")
    raw = data[t.offset:t.offset + n_bytes]
    if type_name in FLOAT_TYPES:
        dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[type_name]
        return GGUFTensor(t.name, type_name, shape, raw.view(dtype).reshape(shape))
    return GGUFTensor(t.name, type_name, shape, raw.reshape(*shape[:-1], inner))
