"""A GGUF file as a checkpoint like any other.

`gguf_checkpoint_dir` turns a `.gguf` into a checkpoint directory, derived once per file (by
its real path, size and modification time) under the cache: config.json and the tokenizer's
files rebuilt from the file's metadata (`gguf_names`, `gguf_tokenizer`), and a link to the
file itself. Everything that reads a checkpoint directory (the config, the tokenizer, the chat
template, the server's tokenizer info) then reads it as it reads any Hugging Face checkpoint,
with nothing beside the file. Deriving one removes those of files gone since and of this
file's earlier versions (`prune_derived`).

`load_gguf` reads the linked file's tensors, memory-mapped, under the HF names the family's
loader takes, undoing the converter's changes (`gguf_names`), and hands them to the family's
`build_weights` one at a time as it asks (`GGUFTensors`): F32 tensors are the file's pages
themselves, F16 and BF16 ones become float32 one matrix at a time, and block-quantized matrices
run as stored: their rows repacked (`block_quant.from_gguf`, a `BlockWeight` the loader fuses
with `stacked.join_rows`), the file's pages released. No float32 copy of a quantized matrix is
made, but of GPT-2's position table (`DEQUANTIZED`), which the model adds rather than multiplies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from nanovllm.model.checkpoint import gguf_names
from nanovllm.model.checkpoint.gguf_file import GGUFFile, GGUFTensor, open_gguf
from nanovllm.model.checkpoint.gguf_tokenizer import build_tokenizer
from nanovllm.model.checkpoint.loader import build_weights
from nanovllm.model.checkpoint.safetensors_io import CheckpointError, release_pages
from nanovllm.model.weights.block_quant import BlockWeight, from_gguf

LINK = "model.gguf"  # the derived directory's link to the file
VERSION = 1          # of the derived directory's files; bump when they change
DEQUANTIZED = ("wpe.weight",)  # tensors a model reads as float32 arrays, whatever the file holds


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the one `.gguf` in a directory that holds
    no config.json; None when `path` is neither. Several `.gguf` files in one directory are
    refused, naming them."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise CheckpointError(f"{path}: holds {len(found)} GGUF files "
                              f"({', '.join(p.name for p in found)}); name the one to load")
    return found[0] if found else None


def gguf_checkpoint_dir(gguf_path: str | Path, cache_dir: Path) -> Path:
    """The checkpoint directory derived from a GGUF file (see the module's doc), written on
    first use: the file is opened and checked (architecture, tensor types, tokenizer) here."""
    real = Path(gguf_path).resolve()
    st = real.stat()
    key = hashlib.sha256(f"{VERSION}\0{real}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    out = cache_dir / f"{real.stem}-{key.hexdigest()[:16]}"
    if (out / LINK).exists():
        return out
    gguf = open_gguf(real)
    config = gguf_names.hf_config(real, gguf.metadata, gguf.tensors)
    tokenizer, tokenizer_config = build_tokenizer(real, gguf.metadata)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=cache_dir))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        tokenizer.save(str(tmp / "tokenizer.json"))
        os.symlink(real, tmp / LINK)
        os.replace(tmp, out)  # concurrent writers: one rename wins, the others' stay removed
    except OSError:
        if not (out / LINK).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune_derived(cache_dir, real, keep=out)
    return out


def prune_derived(cache_dir: Path, real: Path, keep: Path) -> None:
    """Removes the derived directories under cache_dir (but `keep`) whose file is gone or is
    `real` at an earlier size or time: each holds a copy of its file's tokenizer, which for a
    large vocabulary is tens of MB. A process that loaded from one has read it already."""
    for entry in cache_dir.iterdir():
        link = entry / LINK
        if entry == keep or entry.name.startswith(".") or not link.is_symlink():
            continue  # (a name with a dot: another process's directory being written)
        target = Path(os.readlink(link))
        if target == real or not target.exists():
            shutil.rmtree(entry, ignore_errors=True)


def is_gguf_checkpoint(model_dir: str | Path) -> bool:
    return (Path(model_dir) / LINK).exists()


def load_gguf(model_dir: str | Path, family, dtype: str = "auto",
              quantization: str | None = None):
    """(config, weights) of a derived GGUF checkpoint directory, through the family's own
    `build_weights` (see the module's doc)."""
    model_dir = Path(model_dir)
    try:
        cfg = family.config.from_json(model_dir / "config.json")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    gguf = open_gguf(model_dir / LINK)
    config = json.loads((model_dir / "config.json").read_text())
    tensors = GGUFTensors(gguf, config)
    tensors.check(family.shapes(cfg))
    return cfg, build_weights(family, cfg, tensors, dtype, quantization)


class GGUFTensors(Mapping):
    """The file's tensors by HF name, each converted when it is looked up (see the module's
    doc), so a loader that reads one matrix at a time holds one converted matrix at a time."""

    def __init__(self, gguf: GGUFFile, config: dict):
        self.gguf, self.config = gguf, config
        arch = gguf.architecture
        self.arch = arch
        self.names = {hf: name for name in gguf.tensors
                      if (hf := gguf_names.hf_name(arch, name)) is not None}
        if "lm_head.weight" in self.names and config.get("tie_word_embeddings"):
            del self.names["lm_head.weight"]

    def check(self, want: dict[str, tuple[int, ...]]) -> None:
        """Every tensor `want` names is in the file with its shape, and the file holds no
        tensor we would not read (but Llama 3's rope factors, read into the config)."""
        path = self.gguf.path
        for hf, shape in want.items():
            if hf not in self.names:
                raise CheckpointError(f"{path}: missing tensor {_gguf_name(self.arch, hf)} "
                                      f"({hf} of a {self.config['architectures'][0]})")
            if self.shape(hf) != shape:
                raise CheckpointError(f"{path}: tensor {self.names[hf]} has shape "
                                      f"{self.shape(hf)}, but the metadata implies {shape}")
        for name in self.gguf.tensors:
            hf = gguf_names.hf_name(self.arch, name)
            if name != gguf_names.ROPE_FREQS and (hf is None or hf not in want) and not (
                    hf == "lm_head.weight" and self.config.get("tie_word_embeddings")):
                raise CheckpointError(f"{path}: unexpected tensor {name} (not part of a "
                                      f"{self.arch} model with the shapes in its metadata)")

    def shape(self, hf: str) -> tuple[int, ...]:
        """The shape `__getitem__` gives, without reading the tensor."""
        shape = self.gguf.tensors[self.names[hf]].shape
        return shape[::-1] if self._transposed(hf, shape) else shape

    def _transposed(self, hf: str, shape: tuple[int, ...]) -> bool:
        return self.arch == "gpt2" and len(shape) == 2 and hf.startswith("h.")

    def __getitem__(self, hf: str) -> np.ndarray | BlockWeight:
        tensor = self.gguf.tensors[self.names[hf]]
        if not tensor.is_float and hf not in DEQUANTIZED:
            return self.block_weight(hf, tensor)
        rows = tensor_array(self.gguf.path, tensor)
        if (heads := gguf_names.permuted_heads(self.arch, hf, self.config)) is not None:
            rows = gguf_names.unpermute(rows, heads)
        if self._transposed(hf, rows.shape):
            rows = rows.T  # GPT-2's loader takes Conv1D's [in, out]: a view, transposed back
        return rows

    def block_weight(self, hf: str, tensor: GGUFTensor) -> BlockWeight:
        """A block-quantized matrix as stored, repacked; its rows (each whole blocks) put back
        in the HF order (llama's q/k unpermuted); always [out, in], GPT-2's too."""
        raw = tensor.data  # uint8 [out, bytes per row]
        if (heads := gguf_names.permuted_heads(self.arch, hf, self.config)) is not None:
            raw = gguf_names.unpermute(raw, heads)
        try:
            weight = from_gguf(tensor.type_name, raw, tensor.shape)
        except ValueError as e:
            raise CheckpointError(f"{self.gguf.path}: tensor {tensor.name} "
                                  f"({tensor.type_name}): {e}") from e
        release_pages(tensor.data)  # repacked: only the new copy stays resident
        return weight

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _gguf_name(arch: str, hf: str) -> str:
    """The GGUF name of an HF tensor name (for messages)."""
    globals_, block = ((gguf_names.GPT2_GLOBAL, gguf_names.GPT2_BLOCK) if arch == "gpt2"
                       else (gguf_names.LLAMA_GLOBAL, gguf_names.LLAMA_BLOCK))
    for name, target in globals_.items():
        if target == hf:
            return name
    _, layer, *rest = hf.split(".")
    module, kind = ".".join(rest[:-1]), rest[-1]
    short = next((k for k, v in block.items() if v == module), module)
    return f"blk.{layer}.{short}.{kind}"


def tensor_array(path: Path, tensor: GGUFTensor) -> np.ndarray:
    """A tensor as float32, [out, in] for a matrix: F32 as the file's own pages, F16 and BF16
    widened (exactly), a block-quantized type dequantized (`dequantize_stored`). The pages of
    a tensor read into a new array are released (they would count twice in RSS)."""
    if tensor.type_name == "F32":
        return tensor.data
    if tensor.type_name == "F16":
        wide = tensor.data.astype(np.float32)
    elif tensor.type_name == "BF16":
        wide = (tensor.data.astype(np.uint32) << 16).view(np.float32)
    else:
        wide = dequantize_stored(path, tensor)
    release_pages(tensor.data)
    return wide


def dequantize_stored(path: Path, tensor: GGUFTensor) -> np.ndarray:
    """The float32 array a block-quantized tensor stands for (a `DEQUANTIZED` one), by the
    `gguf` package's own dequantization."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    try:
        return dequantize(tensor.data, GGMLQuantizationType[tensor.type_name]).reshape(
            tensor.shape)
    except (NotImplementedError, ValueError) as e:
        raise CheckpointError(f"{path}: tensor {tensor.name} ({tensor.type_name}): {e}") from e
