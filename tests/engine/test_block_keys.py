"""Block keys are the same in every process: a prefix cache on disk (or shared between
replicas) finds a block by the key another process computed for it."""

from __future__ import annotations

import os
import subprocess
import sys

from nanovllm.block_manager import chain_hash

CHAIN = """
from nanovllm.block_manager import chain_hash
h = None
for i in range(4):
    h = chain_hash(list(range(16 * i, 16 * i + 16)), h)
    print(h)
"""


def keys_in_a_process(hash_seed: str) -> list[int]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", CHAIN], env=env, check=True,
                         capture_output=True, text=True).stdout
    return [int(line) for line in out.split()]


def test_keys_do_not_depend_on_the_process():
    first, second = keys_in_a_process("1"), keys_in_a_process("2")
    assert first == second and len(set(first)) == 4


def test_a_key_depends_on_the_tokens_their_order_and_the_prefix():
    tokens = list(range(16))
    root = chain_hash(tokens, None)
    assert chain_hash(tokens, None) == root
    assert chain_hash(tokens[::-1], None) != root
    assert chain_hash(tokens[:-1] + [16], None) != root
    assert chain_hash(tokens, root) != root
    assert chain_hash(tokens, root) != chain_hash(tokens, chain_hash(tokens[::-1], None))
    assert chain_hash([2**40], None) != chain_hash([0], None)  # large ids are not truncated
