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
import logging
import os
import stat
from pathlib import Path

from nanovllm.kv_disk.store import make_folder, remove_entry

logger = logging.getLogger("nanovllm")

FORMAT_VERSION = 1  # of the block file and of this fingerprint; bumped when either changes
CHUNK = 1 << 22
MEMO_CHECK = 16  # hex digits of a memo's check
MEMO_BYTES = 64 + MEMO_CHECK  # a memo file: the digest, then its check
HEX = frozenset("0123456789abcdef")
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
    memo = memo_dir / f"{memo_key}.memo"
    known = read_memo(memo, memo_key)
    if known is not None:
        return known
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    temp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
    try:
        make_folder(memo_dir)
        temp.write_text(digest + memo_check(memo_key, digest))
        os.replace(temp, memo)
    except OSError:
        remove_entry(temp)  # not remembered: the next start hashes it again
    return digest


def memo_check(memo_key: str, digest: str) -> str:
    """What a memo holds after the digest: it proves the memo whole and written for its key (a
    flipped byte in the digest alone would name other weights)."""
    return hashlib.sha256(f"{memo_key}\0{digest}".encode()).hexdigest()[:MEMO_CHECK]


def read_memo(memo: Path, memo_key: str) -> str | None:
    """The digest a memo remembers, or None: absent, or anything else than what file_digest
    writes (the directory's files are untrusted: one warning, removed, hashed again)."""
    try:
        st = memo.lstat()
    except OSError:
        return None
    text = None
    if stat.S_ISREG(st.st_mode) and st.st_size == MEMO_BYTES:  # a FIFO or a huge file: not read
        try:
            text = memo.read_bytes().decode("ascii")
        except (OSError, UnicodeDecodeError):
            pass
    if text is not None:
        digest, check = text[:64], text[64:]
        if check == memo_check(memo_key, digest) and all(c in HEX for c in digest):
            return digest
    logger.warning("prefix cache directory: %s is not a digest this server wrote; ignored, the "
                   "checkpoint is hashed again", memo)
    remove_entry(memo)
    return None
