"""The incremental path: a paged KV cache fed by prefill chunks and decode steps, against
`model/architectures/gpt2_reference.py`'s full pass over the whole sequence.

Every sequence gets a shuffled (non-contiguous) block table, and the caches start full of large
random garbage, so a step only gives the reference's logits if every key and value is written to
and read back from exactly the right slot, and padding is masked out.
slot(pos) = block_table[pos // BLOCK] * BLOCK + pos % BLOCK.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanovllm.model import AttentionBatch, forward
from nanovllm.model.architectures import gpt2_reference as ref

BLOCK = 4
NUM_BLOCKS = 48
TOL = 1e-5


@dataclass
class Seq:
    ids: np.ndarray
    table: np.ndarray  # block ids, in sequence order

    def slots(self, positions) -> np.ndarray:
        positions = np.asarray(positions)
        return self.table[positions // BLOCK] * BLOCK + positions % BLOCK


class Paged:
    """A model plus its KV cache, and a way to run one mixed batch step on it."""

    def __init__(self, cfg, weights, seed=0):
        self.cfg, self.weights = cfg, weights
        self.rng = np.random.default_rng(seed)
        shape = (NUM_BLOCKS * BLOCK, cfg.n_head, cfg.head_dim)
        self.caches = [tuple(100 * self.rng.standard_normal(shape, dtype=np.float32)
                             for _ in range(2)) for _ in range(cfg.n_layer)]
        self.free = list(self.rng.permutation(NUM_BLOCKS))  # shuffled: tables are not contiguous

    def new_seq(self, length: int) -> Seq:
        n_blocks = -(-length // BLOCK)
        table = np.array([self.free.pop() for _ in range(n_blocks)])
        ids = self.rng.integers(0, self.cfg.vocab_size, length)
        return Seq(ids, table)

    def step(self, decodes=(), prefills=(), logit_rows=None) -> np.ndarray:
        """decodes: [(seq, pos)], one token each; prefills: [(seq, start, end)] chunks."""
        ids, positions, batch_prefills = [], [], []
        for seq, pos in decodes:
            ids.append(seq.ids[pos:pos + 1])
            positions.append(np.array([pos]))
        max_blocks = max((len(seq.table) for seq, _ in decodes), default=0)
        tables = np.zeros((len(decodes), max_blocks), dtype=np.int64)
        for i, (seq, _) in enumerate(decodes):
            tables[i, :len(seq.table)] = seq.table
        context_lens = np.array([pos + 1 for _, pos in decodes], dtype=np.int64)
        row = len(decodes)
        for seq, start, end in prefills:
            ids.append(seq.ids[start:end])
            positions.append(np.arange(start, end))
            batch_prefills.append((row, row + end - start, seq.slots(np.arange(end))))
            row += end - start
        positions = np.concatenate(positions)
        slot_mapping = np.concatenate(
            [seq.slots([pos]) for seq, pos in decodes]
            + [seq.slots(np.arange(s, e)) for seq, s, e in prefills])
        batch = AttentionBatch(slot_mapping, len(decodes), BLOCK, tables, context_lens,
                               batch_prefills)
        return forward(self.weights, self.cfg, np.concatenate(ids), positions,
                       kv_caches=self.caches, batch=batch, logit_rows=logit_rows)

    def full(self, seq: Seq) -> np.ndarray:
        """The reference's logits for the whole sequence, one full causal pass."""
        return ref.forward(self.weights, self.cfg, seq.ids)


def report(diffs: list[float], what: str, record_property) -> float:
    worst = max(diffs)
    print(f"\n{what}: max |paged - reference| = {worst:.3g}")
    record_property("max_abs_diff", worst)
    return worst


def test_block_tables_are_shuffled(tiny_model):
    paged = Paged(*tiny_model)
    table = paged.new_seq(40).table
    assert len(table) == 10
    assert not np.array_equal(np.diff(table), np.ones(9)), "block table happens to be contiguous"


def test_prefill_then_decode_one_token_at_a_time_matches_full_pass(tiny_model, record_property):
    paged = Paged(*tiny_model)
    seq = paged.new_seq(30)
    full = paged.full(seq)
    diffs = [np.abs(paged.step(prefills=[(seq, 0, 11)]) - full[:11]).max()]
    for pos in range(11, 30):
        logits = paged.step(decodes=[(seq, pos)])
        assert logits.shape == (1, paged.cfg.vocab_size)
        diffs.append(np.abs(logits[0] - full[pos]).max())
    assert report(diffs, "prefill 11 + 19 decodes", record_property) <= TOL


def test_chunked_prefill_matches_full_pass(tiny_model, record_property):
    paged = Paged(*tiny_model)
    seq = paged.new_seq(37)
    full = paged.full(seq)
    diffs, start = [], 0
    for size in (5, 3, 8, 1, 4, 16):  # chunk boundaries inside and across blocks
        logits = paged.step(prefills=[(seq, start, start + size)])
        diffs.append(np.abs(logits - full[start:start + size]).max())
        start += size
    assert report(diffs, "chunked prefill", record_property) <= TOL


def test_mixed_batch_of_decodes_and_prefill_chunks_in_one_call(tiny_model, record_property):
    """Two decodes with different context lengths (so one is padded) and two prefill chunks,
    one of them continuing a cached prefix, all in a single forward call."""
    paged = Paged(*tiny_model)
    a, b, c, d = (paged.new_seq(n) for n in (14, 9, 6, 12))
    paged.step(prefills=[(a, 0, 13), (c, 0, 4)])
    paged.step(prefills=[(d, 0, 5)])
    logits = paged.step(decodes=[(a, 13), (c, 4)], prefills=[(b, 0, 9), (d, 5, 12)])
    expected = np.concatenate([paged.full(a)[13:14], paged.full(c)[4:5],
                               paged.full(b), paged.full(d)[5:12]])
    assert logits.shape == expected.shape == (2 + 9 + 7, paged.cfg.vocab_size)
    diff = float(np.abs(logits - expected).max())
    assert report([diff], "mixed batch", record_property) <= TOL
    # A following step reads K/V the mixed step wrote: c's token 4 (a decode) and d's 5..11.
    logits = paged.step(decodes=[(d, 11), (c, 5)])  # d's token 11 is re-decoded: same slot
    assert np.abs(logits[0] - paged.full(d)[11]).max() <= TOL
    assert np.abs(logits[1] - paged.full(c)[5]).max() <= TOL


def test_logit_rows_selects_rows_for_the_lm_head(tiny_model):
    paged = Paged(*tiny_model)
    a, b = paged.new_seq(8), paged.new_seq(10)
    paged.step(prefills=[(a, 0, 7)])
    rows = np.array([0, 10])  # a's decode, and the last row of b's prefill
    logits = paged.step(decodes=[(a, 7)], prefills=[(b, 0, 10)], logit_rows=rows)
    assert logits.shape == (2, paged.cfg.vocab_size)
    assert np.abs(logits[0] - paged.full(a)[7]).max() <= TOL
    assert np.abs(logits[1] - paged.full(b)[9]).max() <= TOL
    c = paged.new_seq(6)
    last = paged.step(prefills=[(c, 0, 6)], logit_rows=slice(-1, None))
    assert last.shape == (1, paged.cfg.vocab_size)
    assert np.abs(last[0] - paged.full(c)[5]).max() <= TOL


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=8),
       as_decode=st.lists(st.booleans(), min_size=8, max_size=8),
       seed=st.integers(0, 2**16))
def test_any_split_into_chunks_and_decodes_matches_full_pass(tiny_model, chunks, as_decode, seed):
    """Single-token chunks go through the decode path or the prefill path, as drawn."""
    paged = Paged(*tiny_model, seed=seed)
    seq = paged.new_seq(sum(chunks))
    full = paged.full(seq)
    start = 0
    for size, decode in zip(chunks, as_decode, strict=False):
        if size == 1 and decode:
            logits = paged.step(decodes=[(seq, start)])
        else:
            logits = paged.step(prefills=[(seq, start, start + size)])
        assert np.abs(logits - full[start:start + size]).max() <= TOL
        start += size


@pytest.mark.slow
def test_gpt2_124m_shapes_prefill_then_decode_matches_full_pass(gpt2_ckpt, record_property):
    from nanovllm.model import load_gpt2

    paged = Paged(*load_gpt2(gpt2_ckpt))
    a, b = paged.new_seq(40), paged.new_seq(20)
    full_a, full_b = paged.full(a), paged.full(b)
    diffs = [np.abs(paged.step(prefills=[(a, 0, 37)]) - full_a[:37]).max()]
    logits = paged.step(decodes=[(a, 37)], prefills=[(b, 0, 20)])
    diffs.append(np.abs(logits[0] - full_a[37]).max())
    diffs.append(np.abs(logits[1:] - full_b).max())
    for pos in (38, 39):
        diffs.append(np.abs(paged.step(decodes=[(a, pos)])[0] - full_a[pos]).max())
    assert report(diffs, "124M prefill + mixed + decodes", record_property) <= TOL
