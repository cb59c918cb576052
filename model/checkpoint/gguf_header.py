"""A GGUF file's header read with `struct`: its metadata and where each tensor's bytes are.

The `gguf` package's reader builds two numpy views of the mapped file per metadata string,
so a vocabulary of 150,000 tokens and as many merges takes it minutes on a busy machine; this
reads the same header in one pass over its bytes (version 2 and 3, little-endian: what
llama.cpp writes). tests/model/test_gguf_header.py checks it against the `gguf` reader.

Layout: "GGUF", version u32, tensor count u64, metadata count u64; each metadata entry a
key (u64 length, UTF-8), a value type u32 and the value (an array: item type u32, count u64,
the items); then each tensor's name, dims count u32, dims u64 (innermost first), type u32 and
offset u64 from the data section, which starts at the next multiple of `general.alignment`.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# GGUF's value types: code -> struct format (STRING = 8 and ARRAY = 9 are read apart).
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
STRING, ARRAY, FLOAT32 = 8, 9, 6
DEFAULT_ALIGNMENT = 32


class HeaderError(ValueError):
    """The header is cut short or holds what no GGUF writer writes (the message says what)."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # as stored: innermost first
    type_code: int         # GGML's tensor type
    offset: int            # of its bytes, from the start of the file


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    metadata: dict         # key -> int, float, bool, str, or a list of them
    tensors: list[TensorInfo]


class _Cursor:
    def __init__(self, buf) -> None:
        self.buf, self.at = buf, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.at + size > len(self.buf):
            raise HeaderError(f"the header ends past the end of the file (at byte {self.at})")
        value = struct.unpack_from(fmt, self.buf, self.at)
        self.at += size
        return value[0] if len(value) == 1 else value

    def string(self) -> str:
        n = self.take("<Q")
        if self.at + n > len(self.buf):
            raise HeaderError(f"a string of {n} bytes at byte {self.at} runs past the end")
        text = bytes(self.buf[self.at:self.at + n]).decode("utf-8")
        self.at += n
        return text

    def value(self, code: int):
        if code == STRING:
            return self.string()
        if code == ARRAY:
            return self.array()
        if code not in SCALARS:
            raise HeaderError(f"unknown value type {code} at byte {self.at}")
        value = self.take("<" + SCALARS[code])
        # A float32 as written (1e-06), not as widened (9.99999997e-07).
        return float(str(np.float32(value))) if code == FLOAT32 else value

    def array(self) -> list:
        code, n = self.take("<I"), self.take("<Q")
        if code == STRING:
            return [self.string() for _ in range(n)]
        if code == ARRAY:
            return [self.array() for _ in range(n)]
        if code not in SCALARS:
            raise HeaderError(f"unknown array item type {code} at byte {self.at}")
        dtype = np.dtype("<" + SCALARS[code])
        end = self.at + n * dtype.itemsize
        if end > len(self.buf):
            raise HeaderError(f"an array of {n} items at byte {self.at} runs past the end")
        items = np.frombuffer(self.buf, dtype, n, self.at).tolist()
        self.at = end
        return items


def read_header(path: str | Path) -> Header:
    """The header of the GGUF file at `path` (HeaderError if it cannot be one)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return parse(buf)


def parse(buf) -> Header:
    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise HeaderError("it does not start with 'GGUF'")
    cur.at = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise HeaderError(f"GGUF version {version} (versions 2 and 3, little-endian, are read)")
    n_tensors, n_fields = cur.take("<Q"), cur.take("<Q")
    metadata = {}
    for _ in range(n_fields):
        key = cur.string()
        metadata[key] = cur.value(cur.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = tuple(cur.take("<Q") for _ in range(cur.take("<I")))
        infos.append((name, dims, cur.take("<I"), cur.take("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    start = -(-cur.at // alignment) * alignment
    return Header(version, metadata, [TensorInfo(name, dims, code, start + offset)
                                      for name, dims, code, offset in infos])
