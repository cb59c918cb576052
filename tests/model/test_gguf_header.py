"""model/checkpoint/gguf_header.py against the `gguf` package's own reader: on files llama.cpp's
converter wrote (every kind of metadata value: strings, numbers, bools, arrays of each; F32, F16,
BF16 and Q8_0 tensors) and on one `gguf`'s writer filled with every block type, `open_gguf`
gives the metadata `GGUFReader` reads and tensors of the same type, shape and bytes."""

from __future__ import annotations

import numpy as np
import pytest

from nanovllm.model.checkpoint.gguf_file import open_gguf
from nanovllm.model.checkpoint.gguf_header import HeaderError, parse

FILES = [("gpt2", "f16"), ("gpt2", "q8_0"), ("llama-spm", "f32"), ("qwen3-chat", "bf16")]
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


def reference(path):
    """(metadata, {name: (type name, numpy shape, bytes)}) as the `gguf` package reads them."""
    import gguf

    reader = gguf.GGUFReader(path)
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        if field.types == [gguf.GGUFValueType.FLOAT32]:
            value = float(str(np.float32(value)))
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, list):
            value = [v.item() if isinstance(v, np.generic) else v for v in value]
        metadata[key] = value
    tensors = {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())),
                        np.asarray(t.data).tobytes()) for t in reader.tensors}
    return metadata, tensors


def check_equal(path):
    metadata, tensors = reference(path)
    ours = open_gguf(path)
    assert ours.metadata == metadata
    assert {k: type(v) for k, v in ours.metadata.items()} == {
        k: type(v) for k, v in metadata.items()}
    assert list(ours.tensors) == list(tensors)
    for name, t in ours.tensors.items():
        assert (t.type_name, t.shape, np.asarray(t.data).tobytes()) == tensors[name]


@pytest.mark.parametrize("model, outtype", FILES)
def test_header_is_the_gguf_readers(gguf_file, model, outtype):
    check_equal(gguf_file(model, outtype)[1])


def test_every_block_type_is_the_gguf_readers(gguf_file, tmp_path):
    from gguf_files import requantize

    kinds = iter(BLOCK_TYPES * 8)
    path = requantize(gguf_file("llama-256")[1], tmp_path / "mixed.gguf",
                      lambda name, shape: next(kinds))
    assert {t.type_name for t in open_gguf(path).tensors.values()} >= set(BLOCK_TYPES)
    check_equal(path)


def test_a_cut_header_is_refused(gguf_file):
    data = gguf_file("gpt2", "f16")[1].read_bytes()
    parse(data)  # whole: fine
    for cut in (6, 30, 200, 2000):
        with pytest.raises(HeaderError):
            parse(data[:cut])
    with pytest.raises(HeaderError, match="version 1"):
        parse(b"GGUF\x01\x00\x00\x00" + data[8:])
