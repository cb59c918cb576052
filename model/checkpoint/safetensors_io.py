"""Memory-mapped reading of `.safetensors` files into float32 numpy arrays.

The format is an 8-byte little-endian header length, a JSON header (dtype, shape, byte range of
each tensor) and the raw data. The `safetensors` package's numpy API copies every tensor and
cannot read BF16, so we map the file once and view each tensor in place: F32 tensors cost no
copy at all, F16/BF16 ones exactly one (the cast to float32).
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: file is {size} bytes, too short for a safetensors header")
        n = int.from_bytes(prefix, "little")
        if n > size - 8:
            raise CheckpointError(f"{path}: header claims {n} bytes but the file has {size} "
                                  "(truncated, or not a safetensors file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n


def _to_float32(raw: np.ndarray, dtype: str, shape: list[int]) -> np.ndarray:
    arr = raw.view(DTYPES[dtype]).reshape(shape)
    if dtype == "F32":
        return arr
    if dtype == "F16":
        return arr.astype(np.float32)
    return (arr.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is float32's top half


def _entry(path: Path, name: str, info) -> tuple[str, list[int], int, int]:
    """(dtype, shape, start, end) of one header entry, or a CheckpointError naming the tensor."""
    try:
        dtype, shape, (start, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: tensor {name}: corrupt header entry {info!r}") from e
    ints = [*shape, start, end]
    if not isinstance(dtype, str) or not all(type(i) is int and i >= 0 for i in ints):
        raise CheckpointError(f"{path}: tensor {name}: corrupt header entry {info!r}")
    return dtype, shape, start, end


def read_safetensors(path: str | Path, skip=lambda name: False) -> dict[str, np.ndarray]:
    """All tensors of one file as float32 arrays (F32 ones are read-only views of the mapping).

    Names for which `skip(name)` is true are not read at all, whatever their dtype (GPT-2's old
    causal-mask buffers are stored as U8 or BOOL).
    """
    path = Path(path)
    header, data_start = _read_header(path)
    data_len = path.stat().st_size - data_start
    # Plain ndarray views of the mapping, not np.memmap ones: numba types an ndarray subclass on
    # a slow path, on every kernel call a weight is passed to (microseconds per argument).
    data = (np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)) if data_len
            else np.empty(0, np.uint8))
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or skip(name):
            continue
        dtype, shape, start, end = _entry(path, name, info)
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}; only F32, F16, BF16 load")
        nbytes = int(np.prod(shape)) * DTYPES[dtype].itemsize
        if not 0 <= start <= end or end - start != nbytes:
            raise CheckpointError(f"{path}: tensor {name}: byte range [{start}, {end}) does not "
                                  f"hold a {dtype} tensor of shape {shape}")
        if end > data_len:
            raise CheckpointError(f"{path}: tensor {name} ends at data byte {end} but the file has "
                                  f"only {data_len} (truncated?)")
        tensors[name] = _to_float32(data[start:end], dtype, shape)
    return tensors


def release_pages(arr: np.ndarray) -> None:
    """Lets the kernel drop the resident pages of a memory-mapped tensor that was read once and
    copied (they would otherwise count twice in RSS). Reading it again faults pages back in
    from the file. Arrays that are not file mappings (and weights that are not arrays, a GGUF
    file's repacked blocks) are left alone."""
    if not isinstance(arr, np.ndarray):
        return
    mapping = file_mapping(arr)
    if mapping is None:
        return
    start = arr.ctypes.data - np.frombuffer(mapping, np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: neighbours stay
    last = (start + arr.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def file_mapping(arr: np.ndarray) -> mmap.mmap | None:
    """The file mapping arr is a view of (`read_safetensors`' np.memmap, found through the
    views' bases), or None."""
    base = arr
    while base is not None and getattr(base, "_mmap", None) is None:
        base = base.base
    return None if base is None else base._mmap
