"""Reading a GGUF file (llama.cpp's format) with the `gguf` package's reader, memory-mapped.

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
    from gguf import GGUFReader

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
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt GGUF file of {size} bytes "
                              f"({' '.join(str(e).split())})") from e
    tensors = {t.name: _tensor(path, t, size) for t in reader.tensors}
    return GGUFFile(path, {k: _value(f) for k, f in reader.fields.items()
                           if not k.startswith("GGUF.")}, tensors)


def _tensor(path: Path, t, file_size: int) -> GGUFTensor:
    type_name = t.tensor_type.name
    if type_name not in SUPPORTED_TYPES:
        raise CheckpointError(f"{path}: tensor {t.name} is {type_name}, a type nanovllm does not "
                              f"run; supported: {', '.join(SUPPORTED_TYPES)}")
    if t.data_offset + t.n_bytes > file_size:
        raise CheckpointError(f"{path}: truncated: tensor {t.name} ends at byte "
                              f"{t.data_offset + t.n_bytes}, but the file has {file_size}")
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    data = t.data.view(np.uint16) if type_name == "BF16" else t.data
    if type_name in FLOAT_TYPES:
        data = data.reshape(shape)
    return GGUFTensor(t.name, type_name, shape, data)


def _value(field):
    """A metadata field's value: a number, bool or str, or a list of them."""
    from gguf import GGUFValueType

    value = field.contents()
    if field.types == [GGUFValueType.FLOAT32]:
        return float(str(np.float32(value)))  # 1e-06 as written, not 9.99999997e-07
    if isinstance(value, np.generic):
        return value.item()
    if field.types and field.types[0] == GGUFValueType.ARRAY and isinstance(value, list):
        return [v.item() if isinstance(v, np.generic) else v for v in value]
    return value
