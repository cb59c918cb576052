"""What makes a KV block's bytes valid, as one 32-byte fingerprint.

A block's keys and values depend on the weights (the checkpoint's contents, not its path: a
copy on another replica shares blocks, a checkpoint rewritten in place does not), on how they
are stored (dtype, quantization), on the cache's layout (kv_cache_dtype, block size, the
architecture's layers, key/value heads and head size) and on the format of a block file. Any
change gives another fingerprint, so no block is ever reused across it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FORMAT_VERSION = 1  # of the block file and of this fingerprint; bumped when either changes
CHUNK = 1 << 22
# The files whose bytes make a checkpoint (tokenizer files do not change K/V).
WEIGHT_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json")


def fingerprint(fields: dict) -> bytes:
    """32 bytes naming `fields` (JSON values), the same in every process."""
    text = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).digest()


def checkpoint_digest(model_dir: str | os.PathLike, memo_dir: str | os.PathLike) -> str:
    """A digest of the checkpoint's config and weight files' contents. Hashing gigabytes takes
    seconds, so each file's digest is remembered under `memo_dir` by its real path, size and
    modification time: only a new or changed file is read again."""
    model_dir = Path(model_dir)
    files = sorted({p for pattern in WEIGHT_FILES for p in model_dir.glob(pattern) if p.is_file()})
    whole = hashlib.sha256()
    for path in files:
        whole.update(path.name.encode() + b"\0" + file_digest(path, Path(memo_dir)).encode())
    return whole.hexdigest()


def file_digest(path: Path, memo_dir: Path) -> str:
    real = path.resolve()
    st = real.stat()
    memo_key = hashlib.sha256(f"{real}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    memo = memo_dir / f"{memo_key}.digest"
    try:
        known = memo.read_text()
        if len(known) == 64:
            return known
    except OSError:
        pass
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        memo_dir.mkdir(parents=True, exist_ok=True)
        temp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        temp.write_text(digest)
        os.replace(temp, memo)
    except OSError:
        pass  # not remembered: the next start hashes it again
    return digest
