"""A directory of KV blocks, one file each, shared safely by any number of processes.

A block file is named by its prefix key under a folder for its fingerprint (everything that
makes K/V bytes valid: nanovllm/kv_disk/fingerprint.py), and holds a header (magic, fingerprint,
key, the block's token ids), the payload, and a checksum of all that. A reader trusts a file only
once all of it checks out; anything else is skipped with one warning and removed, so it is
recomputed and written again. Files are written under a temporary name and renamed into place:
a file at a block's name is whole, whoever wrote it, and a crash mid-write leaves only a
temporary file (swept later). Two processes writing one block write the same bytes; the last
rename wins.

Writes leave the caller at once: `put` queues a copy for a background thread and drops it when
the queue is full (a slow disk costs later hits, never a step). The directory is kept within its
bound by evicting the least recently used files: a read touches a file's modification time.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import stat
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("nanovllm")

MAGIC = b"NVKVBLK1"
HEADER = struct.Struct("<8s32s16sIQ")  # magic, fingerprint, key, number of tokens, payload bytes
CHECKSUM = struct.Struct("<I")  # CRC-32 of everything before it: catches torn and flipped bytes
SUFFIX, TEMP_SUFFIX = ".kvb", ".tmp"
STALE_TEMP_SECONDS = 600  # a temporary file this old belongs to a writer that died
IDLE_POLL_SECONDS = 0.5  # how soon an idle writer notices the interpreter exiting
RESCAN_EVERY = 64  # writes between two looks at the whole directory (other processes write too)
EVICT_TO = 0.9  # an eviction pass frees down to this share of the bound, not one file at a time


@dataclass(slots=True)
class DiskStats:
    lookups: int = 0        # blocks looked for
    hits: int = 0           # of those, read back whole and valid
    writes: int = 0         # block files written
    dropped: int = 0        # blocks not written: the queue was full or writing was off
    evictions: int = 0      # block files removed to stay within the bound
    invalid: int = 0        # block files found bad (truncated, corrupted, foreign) and skipped
    bytes_read: int = 0
    bytes_written: int = 0


class DiskBlockStore:
    """Block files under `directory`, at most `max_bytes` of them (all fingerprints together).

    `fingerprint` is 32 bytes; keys are 16. `queue_bytes` bounds the payloads waiting to be
    written. Raises ValueError at once if the directory cannot be used."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int, fingerprint: bytes,
                 queue_bytes: int, payload_bytes: int):
        if len(fingerprint) != 32:
            raise ValueError("a fingerprint is 32 bytes")
        if max_bytes <= 0:
            raise ValueError(f"the prefix cache directory's bound must be positive, got {max_bytes}")
        self.root = Path(directory).expanduser()
        self.max_bytes, self.fingerprint, self.payload_bytes = max_bytes, fingerprint, payload_bytes
        self.folder = self.root / fingerprint.hex()[:32]
        _check_usable(self.root, self.folder)
        self.stats = DiskStats()
        self._lock = threading.Lock()  # guards stats and the warned sets across the two threads
        self._warned: set[str] = set()
        self._writing = True
        self._unique = f"{os.getpid()}.{threading.get_ident()}"
        self._count = 0
        self._queue: queue.Queue = queue.Queue(max(1, queue_bytes // max(1, payload_bytes)))
        self._size = self._scan()[0]  # this process's estimate; rescans correct it
        self._since_scan = 0
        self._writer = threading.Thread(target=self._write_loop, name="kv-disk-writer")
        self._writer.start()

    # ---- the caller's side ---------------------------------------------------------------------
    def get(self, key: bytes, token_ids: tuple[int, ...]) -> memoryview | None:
        """The payload stored for `key` holding `token_ids`, or None (absent or not valid)."""
        path = self.path_of(key)
        with self._lock:
            self.stats.lookups += 1
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None  # absent (a file where its folder goes is replaced by the writer)
        except OSError:  # a link looping...
            self._invalid(path)
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != self._file_size(len(token_ids)):
            self._invalid(path)  # not read: a FIFO would never answer, a huge file fill memory
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None  # evicted by another process meanwhile
        except OSError as e:
            self._warn_once("read", f"prefix cache directory: cannot read {path} ({e}); "
                                    "computing its blocks instead")
            return None
        payload = self._parse(data, key, token_ids)
        if payload is None:
            self._invalid(path)
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass  # evicted by another process meanwhile, or read-only: the bytes are still good
        with self._lock:
            self.stats.hits += 1
            self.stats.bytes_read += len(data)
        return payload

    def contains(self, key: bytes) -> bool:
        return self.path_of(key).exists()

    def put(self, key: bytes, token_ids: tuple[int, ...], payload: bytes | memoryview) -> bool:
        """Queues a block to be written; False if it was dropped (queue full, writing off)."""
        if self._writing:
            try:
                self._queue.put_nowait((key, token_ids, payload))
                return True
            except queue.Full:
                pass
        with self._lock:
            self.stats.dropped += 1
        return False

    def flush(self) -> None:
        """Waits until every queued block has been written (or given up)."""
        self._queue.join()

    def close(self) -> None:
        """Writes what is queued and stops the writer."""
        if self._writer.is_alive():
            self._queue.put((None, (), b""))
            self._writer.join()

    def path_of(self, key: bytes) -> Path:
        name = key.hex()
        return self.folder / name[:2] / (name + SUFFIX)

    # ---- the file format -----------------------------------------------------------------------
    def encode(self, key: bytes, token_ids: tuple[int, ...], payload: bytes | memoryview) -> bytes:
        payload = memoryview(payload).cast("B")  # its length in bytes, whatever its item size
        head = HEADER.pack(MAGIC, self.fingerprint, key, len(token_ids), len(payload))
        body = b"".join((head, struct.pack(f"<{len(token_ids)}q", *token_ids), payload))
        return body + CHECKSUM.pack(zlib.crc32(body))

    def _parse(self, data: bytes, key: bytes, token_ids: tuple[int, ...]) -> memoryview | None:
        """The payload of a whole, uncorrupted file written for this fingerprint, key and tokens
        (a view of `data`: a block is a megabyte or so, not copied again)."""
        n = len(token_ids)
        if len(data) != self._file_size(n):
            return None
        body = memoryview(data)[:-CHECKSUM.size]
        if zlib.crc32(body) != CHECKSUM.unpack_from(data, len(body))[0]:
            return None
        if HEADER.unpack_from(body) != (MAGIC, self.fingerprint, key, n, self.payload_bytes):
            return None
        if struct.unpack_from(f"<{n}q", body, HEADER.size) != tuple(token_ids):
            return None
        return body[HEADER.size + 8 * n:]

    def _file_size(self, num_tokens: int) -> int:
        return HEADER.size + 8 * num_tokens + self.payload_bytes + CHECKSUM.size

    def _invalid(self, path: Path) -> None:
        with self._lock:
            self.stats.invalid += 1
        self._warn_once(str(path), f"prefix cache directory: {path} is truncated, corrupted or "
                                   "not this model's; skipped, its block is computed again")
        remove_entry(path)  # so that the recomputed block is written in its place

    # ---- the writer thread ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        """Writes queued blocks until closed, or until the main thread has ended and the queue
        is empty: a script's last blocks still reach the disk as the interpreter exits."""
        while True:
            try:
                key, token_ids, payload = self._queue.get(timeout=IDLE_POLL_SECONDS)
            except queue.Empty:
                if not threading.main_thread().is_alive():
                    return
                continue
            try:
                if key is None:
                    return
                if self._writing:
                    self._write(key, token_ids, payload)
            except Exception:  # the tier must never take serving down with it
                logger.exception("prefix cache directory: writing a block failed; writing is off")
                self._writing = False
            finally:
                self._queue.task_done()

    def _write(self, key: bytes, token_ids: tuple[int, ...], payload: bytes | memoryview) -> None:
        path = self.path_of(key)
        data = self.encode(key, token_ids, payload)
        try:  # written already (by anyone): now recently used. Compared whole: a damaged file
            st = path.stat()  # of the same size, never read since, is replaced
            if (stat.S_ISREG(st.st_mode) and st.st_size == len(data)
                    and path.read_bytes() == data):
                os.utime(path)
                return
        except OSError:
            pass  # absent (or just evicted): written below
        if not self._clear_way(path):
            return
        self._count += 1
        temp = path.with_name(f"{path.name}.{self._unique}.{self._count}{TEMP_SUFFIX}")
        try:
            with open(temp, "wb") as f:
                f.write(data)
            os.replace(temp, path)
        except OSError as e:
            remove_entry(temp)
            self._writing = False
            why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else str(e)
            self._warn_once("write", f"prefix cache directory: cannot write to {self.root} "
                                     f"({why}); serving goes on without writing blocks there")
            return
        with self._lock:
            self.stats.writes += 1
            self.stats.bytes_written += len(data)
        self._size += len(data)
        self._since_scan += 1
        if self._size > self.max_bytes or self._since_scan >= RESCAN_EVERY:
            self._evict()

    def _clear_way(self, path: Path) -> bool:
        """Makes room for a block file at `path`: its folder made (a file in its place removed),
        anything but a file at its name removed. False (with one warning) if that fails: the
        block is not written, writing goes on."""
        try:
            make_folder(path.parent)
            if os.path.lexists(path) and not path.is_file() and not remove_entry(path):
                raise OSError(f"{path} is not a file and cannot be removed")
            return True
        except OSError as e:
            self._warn_once(f"clear {path}", f"prefix cache directory: cannot write {path} ({e}); "
                                             "its block is not kept on disk")
            return False

    def _evict(self) -> None:
        """Looks at the whole directory (other processes' files too) and removes the least
        recently used files until it is back under EVICT_TO of its bound."""
        self._since_scan = 0
        total, files = self._scan()
        if total > self.max_bytes:
            files.sort()
            for _, size, path in files:
                if total <= self.max_bytes * EVICT_TO:
                    break
                if remove_entry(path):
                    with self._lock:
                        self.stats.evictions += 1
                total -= size
        self._size = total

    def _scan(self) -> tuple[int, list[tuple[float, int, Path]]]:
        """Bytes in block files under the root, and each file's (mtime, size, path); sweeps
        temporary files that writers which died left behind."""
        total, files, now = 0, [], time.time()
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = Path(folder, name)
                try:
                    st = path.stat()
                except OSError:
                    continue  # removed meanwhile
                if name.endswith(SUFFIX):
                    total += st.st_size
                    files.append((st.st_mtime, st.st_size, path))
                elif name.endswith(TEMP_SUFFIX) and now - st.st_mtime > STALE_TEMP_SECONDS:
                    remove_entry(path)
        return total, files

    def _warn_once(self, what: str, message: str) -> None:
        with self._lock:
            if what in self._warned:
                return
            self._warned.add(what)
        logger.warning(message)


def _check_usable(root: Path, folder: Path) -> None:
    """Creates the directory if need be and proves it writable, or says why it is not."""
    flag = "prefix_cache_dir"
    if root.exists() and not root.is_dir():
        raise ValueError(f"{flag}: {root} is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        make_folder(folder)
        probe = folder / f".probe.{os.getpid()}.{threading.get_ident()}{TEMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag}: cannot write to {root}: {e.strerror or e}") from e


def make_folder(path: Path) -> None:
    """Creates a folder of the directory. What stands in its place and is
    not a folder (a file, a dangling link: damage, not ours to keep) is removed with a warning.
    Raises OSError if that fails."""
    if os.path.lexists(path) and not path.is_dir():
        logger.warning("prefix cache directory: %s should be a folder; removed", path)
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def remove_entry(path: Path) -> bool:
    """Removes a file, a link or an empty folder; False if it could not be."""
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
        return True
    except OSError:
        return False
