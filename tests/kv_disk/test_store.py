"""The disk store on its own: what it reads back is exactly what was written, and nothing else.

Every file it could meet is tried: whole, truncated, corrupted, written for another model,
left half-written by a process killed with SIGKILL, shared with other processes; and the
directory's bound, an unusable directory and a disk that stops taking writes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nanovllm.kv_disk.store import SUFFIX, TEMP_SUFFIX, DiskBlockStore

PAYLOAD = 4096
FP_A, FP_B = bytes(range(32)), bytes(range(1, 33))
TOKENS = tuple(range(16))


def key(i: int) -> bytes:
    return i.to_bytes(16, "little")


def payload(i: int) -> bytes:
    return bytes((i + j) % 251 for j in range(PAYLOAD))


def open_store(directory, fp=FP_A, max_bytes=1 << 30) -> DiskBlockStore:
    return DiskBlockStore(directory, max_bytes, fp, queue_bytes=1 << 24, payload_bytes=PAYLOAD)


def block_files(directory) -> list[Path]:
    return sorted(Path(directory).rglob("*" + SUFFIX))


def test_a_block_written_is_read_back_exactly(tmp_path):
    store = open_store(tmp_path)
    assert store.get(key(1), TOKENS) is None
    assert store.put(key(1), TOKENS, payload(1))
    store.flush()
    assert store.get(key(1), TOKENS) == payload(1)
    again = open_store(tmp_path)  # another process, later: the same file
    assert again.get(key(1), TOKENS) == payload(1)
    assert again.get(key(2), TOKENS) is None
    assert (store.stats.writes, store.stats.hits, again.stats.hits) == (1, 1, 1)
    assert store.stats.bytes_written == again.stats.bytes_read > PAYLOAD
    store.close()
    again.close()


def test_a_block_is_found_only_for_its_own_tokens(tmp_path):
    store = open_store(tmp_path)
    store.put(key(1), TOKENS, payload(1))
    store.flush()
    assert store.get(key(1), TOKENS[::-1]) is None
    store.close()


@pytest.mark.parametrize("damage", ["flip a payload byte", "flip a checksum byte", "truncate",
                                    "empty", "append", "another model's block"])
def test_a_bad_file_is_skipped_with_one_warning_and_written_again(tmp_path, caplog, damage):
    store = open_store(tmp_path)
    store.put(key(1), TOKENS, payload(1))
    store.flush()
    path = store.path_of(key(1))
    data = bytearray(path.read_bytes())
    if damage == "flip a payload byte":
        data[len(data) // 2] ^= 1
    elif damage == "flip a checksum byte":
        data[-1] ^= 0x80
    elif damage == "truncate":
        data = data[:len(data) - 100]
    elif damage == "empty":
        data = bytearray()
    elif damage == "append":
        data += b"\0"
    else:  # whole and checksummed, but written by a store for another model
        other = open_store(tmp_path / "other", fp=FP_B)
        data = bytearray(other.encode(key(1), TOKENS, payload(1)))
        other.close()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="nanovllm"):
        assert store.get(key(1), TOKENS) is None
        assert store.get(key(1), TOKENS) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert store.stats.invalid == 1 and store.stats.hits == 0
    store.put(key(1), TOKENS, payload(1))  # recomputed: written again, and good
    store.flush()
    assert store.get(key(1), TOKENS) == payload(1)
    store.close()


def test_fingerprints_live_apart(tmp_path):
    a, b = open_store(tmp_path, FP_A), open_store(tmp_path, FP_B)
    a.put(key(1), TOKENS, payload(1))
    a.flush()
    assert b.get(key(1), TOKENS) is None and a.get(key(1), TOKENS) == payload(1)
    assert b.stats.invalid == 0  # not a bad file: simply not there for this model
    a.close()
    b.close()


def test_the_directory_stays_within_its_bound_least_recently_used_first(tmp_path):
    one = len(open_store(tmp_path).encode(key(0), TOKENS, payload(0)))
    bound = 10 * one
    store = open_store(tmp_path, max_bytes=bound)
    for i in range(8):
        store.put(key(i), TOKENS, payload(i))
        store.flush()
        old = time.time() - 1000 + i  # written long ago, in order
        os.utime(store.path_of(key(i)), (old, old))
    for i in range(8, 30):
        assert store.get(key(0), TOKENS) == payload(0)  # read all along: kept
        store.put(key(i), TOKENS, payload(i))
        store.flush()
        assert sum(p.stat().st_size for p in block_files(tmp_path)) <= bound
    assert store.stats.evictions == 30 - len(block_files(tmp_path)) > 0
    assert store.get(key(0), TOKENS) == payload(0)
    assert store.get(key(1), TOKENS) is None  # evicted first: the least recently used
    assert store.get(key(29), TOKENS) == payload(29)
    store.close()


def test_an_unusable_directory_is_refused_at_start(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        open_store(file)
    with pytest.raises(ValueError, match="cannot write"):
        open_store(file / "below")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write"):
            open_store(locked)


WRITER = """
import signal, sys
sys.path.insert(0, {tests!r})
from test_store import key, open_store, payload, TOKENS
{setup}
store = open_store({directory!r})
for i in range({first}, {last}):
    store.put(key(i), TOKENS, payload(i))
    {each}
store.flush()
{after}
"""


def run_writer(directory, first, last, setup="", each="pass", after="", **kw):
    code = WRITER.format(tests=str(Path(__file__).parent), directory=str(directory), first=first,
                         last=last, setup=setup, each=each, after=after)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], **kw)


def test_a_writer_killed_mid_write_leaves_nothing_that_reads_as_valid(tmp_path):
    # The writer writes block after block, so the kill lands amid writes and renames.
    proc = run_writer(tmp_path, 0, 10**6, each="store.flush()")
    deadline = time.time() + 120
    while len(block_files(tmp_path)) < 20 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = open_store(tmp_path)
    written = block_files(tmp_path)
    assert len(written) >= 20
    for path in written:  # every file at a block's name is whole
        i = int.from_bytes(bytes.fromhex(path.stem), "little")
        assert store.get(key(i), TOKENS) == payload(i)
    assert store.stats.invalid == 0
    for temp in tmp_path.rglob("*" + TEMP_SUFFIX):  # a temporary file is never read...
        os.utime(temp, (0, 0))                      # ...and swept once it is stale
    store.close()
    open_store(tmp_path).close()
    assert not list(tmp_path.rglob("*" + TEMP_SUFFIX))


def test_processes_share_a_directory(tmp_path):
    writers = [run_writer(tmp_path, first, first + 60) for first in (0, 30)]  # 30 in common
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    store = open_store(tmp_path)
    assert len(block_files(tmp_path)) == 90
    assert all(store.get(key(i), TOKENS) == payload(i) for i in range(90))
    assert store.stats.invalid == 0
    store.close()


def test_a_disk_that_stops_taking_writes_turns_writing_off_with_a_warning(tmp_path):
    # A file-size limit makes every block write fail, as a full disk does; serving goes on.
    setup = ("import resource, logging; logging.basicConfig(); "
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))")
    after = ("assert store.get(key(0), TOKENS) is None; "
             "assert store.stats.writes == 0 and store.stats.dropped > 0; print('served on')")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(WRITER.format(
        tests=str(Path(__file__).parent), directory=str(tmp_path), first=0, last=50, setup=setup,
        each="store.flush()", after=after))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "served on" in proc.stdout
    assert proc.stderr.count("cannot write") == 1, proc.stderr
    assert not block_files(tmp_path) and not list(tmp_path.rglob("*" + TEMP_SUFFIX))
