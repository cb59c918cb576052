"""Turns a batch of logits into next tokens, each row under its own request's parameters.

Order, as in vLLM: logprobs are taken from the raw logits; then allowed_token_ids bans every
other token, logit bias, min_tokens and the penalties adjust the logits, and a structured-output
grammar bans the tokens it does not allow;
greedy rows take the argmax; sampled rows apply temperature, min_p, top_k and top_p to the
probabilities and draw one uniform number from their sequence's own generator (so a seeded
request samples the same alone or inside any batch).

Sampled rows that a filter (min_p, top_k, top_p) changes become their probabilities in place
and in one compiled pass (`weights_`: the temperature and the exponentials; no normalisation,
which neither the filters nor the draw need). The draw is `draw`, compiled: each row's running
sum is walked block by block (the block sums vectorize), then token by token inside the one
block where it passes the target. The plain numpy inverse CDF, `sample_from_probs`, is its
reference: a cumsum (a chain of additions that cannot vectorize), a comparison and a count,
three passes over a batch's probabilities. When no row is filtered (what a request that sets
only a temperature asks), `sample_softmax` does both in one pass that only reads the logits.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nanovllm.contract.step import TokenLogprobs
from nanovllm.model.kernels.shared import KERNEL_MATH, exp32
from nanovllm.runner.seq_state import PenaltyCounts, SequenceState
from nanovllm.runner.structured import GrammarMatcher, StartMatchers
from nanovllm.values.sampling_params import SamplingParams

# Temperatures are clamped to this range, as vLLM does below 0.01: outside it, float32 logits
# overflow to inf or collapse to NaN.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e30
# Adjusted logits are kept finite (but -inf, a ban, stays -inf) for the same reason.
MAX_LOGIT = 1e30

# top_p looks at this many best candidates first; only when they hold less than top_p of the
# mass does it sort the whole vocabulary.
TOP_P_CANDIDATES = 1024

# draw_ sums the probabilities in blocks of this many tokens, then walks one block token by token.
DRAW_BLOCK = 256


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def token_logprobs(logprobs_row: np.ndarray, token: int, top_n: int) -> TokenLogprobs:
    chosen = float(logprobs_row[token])
    ids, lps = [token], [chosen]
    ranks = [int((logprobs_row > chosen).sum()) + 1]
    if top_n:
        top = np.argpartition(-logprobs_row, top_n - 1)[:top_n]
        top = top[np.argsort(-logprobs_row[top], kind="stable")]
        for rank, t in enumerate(top.tolist(), start=1):
            if t != token:
                ids.append(t)
                lps.append(float(logprobs_row[t]))
                ranks.append(rank)
    return TokenLogprobs(ids, lps, ranks)


def new_sequence_state(params: SamplingParams, prompt_token_ids: list[int],
                       rng: np.random.Generator, eos_token_id: int,
                       start_matchers: StartMatchers | None = None) -> SequenceState:
    """What sampling keeps about a new sequence: its arrays, made once, and, where asked for,
    penalty counts (from the prompt) and a grammar matcher (copied from `start_matchers`)."""
    bias, allowed = params.logit_bias, params.allowed_token_ids
    penalised = params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
    return SequenceState(
        params, rng, np.fromiter(bias, np.int64, len(bias)),
        np.fromiter(bias.values(), np.float32, len(bias)), np.array(params.stop_token_ids, np.int64),
        None if allowed is None else np.unique(np.array(allowed, np.int64)),
        PenaltyCounts(prompt_token_ids) if penalised else None,
        GrammarMatcher(params.structured, eos_token_id, start_matchers)
        if params.structured is not None else None)


def took(seq: SequenceState, token: int) -> None:
    """The sequence took `token`: its penalty counts and grammar move past it."""
    if seq.penalty_counts is not None:
        seq.penalty_counts.add(token)
    if seq.grammar is not None:
        seq.grammar.accept(token)


def adjust_logits_(logits: np.ndarray, seqs: list[SequenceState], num_output_tokens: list[int],
                   eos_token_id: int | list[int]) -> None:
    """Logit bias, min_tokens and the penalties, in place on the rows ([len(seqs), vocab]) of the
    sequences that ask for any (`num_output_tokens`: what each has generated so far). The bias of
    every row is one indexing operation; the rest costs each adjusted row a few array operations,
    however many tokens its parameters name."""
    rows = [i for i, s in enumerate(seqs) if s.params.adjusts_logits]
    for i in rows:
        if seqs[i].allowed_ids is not None:
            _keep_only_(logits[i], seqs[i].allowed_ids)
    _add_logit_bias_(logits, [seqs[i] for i in rows], np.array(rows, np.int64))
    for i in rows:
        row, seq = logits[i], seqs[i]
        p = seq.params
        if num_output_tokens[i] < p.min_tokens:
            row[seq.stop_ids] = -np.inf
            if not p.ignore_eos:
                row[eos_token_id] = -np.inf
        if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
            _penalize_(row, seq.penalty_counts, p)
        np.clip(row, -np.inf, MAX_LOGIT, out=row)
        row[np.isnan(row)] = -np.inf


def _keep_only_(row: np.ndarray, allowed: np.ndarray) -> None:
    """Ban, in place, every token of the row outside `allowed` (vLLM's allowed_token_ids)."""
    kept = row[allowed]
    row[:] = -np.inf
    row[allowed] = kept


def _add_logit_bias_(logits: np.ndarray, seqs: list[SequenceState], rows: np.ndarray) -> None:
    counts = [len(s.bias_ids) for s in seqs]
    if sum(counts):
        logits[np.repeat(rows, counts), np.concatenate([s.bias_ids for s in seqs])] += (
            np.concatenate([s.bias_values for s in seqs]))


def _penalize_(logits: np.ndarray, counts: PenaltyCounts, p) -> None:
    """vLLM's penalties, in its order: repetition on every seen token, then frequency and
    presence on the generated ones (only those rows change: a count of 0 subtracts nothing)."""
    if p.repetition_penalty != 1.0:
        seen = counts.seen_ids
        vals = logits[seen]
        # Extreme penalties are clipped below: one under float32's range is 0 there, which
        # makes a banned token's -inf NaN (banned again below).
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty,
                                    vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and len(counts.output_ids):
        logits[counts.output_ids] -= p.frequency_penalty * counts.output_counts + p.presence_penalty


def filters_probs(p: SamplingParams) -> bool:
    """Whether min_p, top_k or top_p can drop a token of this request's probabilities."""
    return p.min_p > 0.0 or p.top_k > 0 or p.top_p < 1.0


def filter_probs_(probs: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Zeroes, in place, the tokens that min_p, top_k and top_p drop from one row of probs."""
    if min_p > 0.0:
        probs[probs < min_p * probs.max()] = 0.0
    if 0 < top_k < probs.shape[0]:
        drop = np.argpartition(-probs, top_k - 1)[top_k:]
        probs[drop] = 0.0
    if top_p < 1.0:
        _top_p_(probs, top_p)
    return probs


def _top_p_(probs: np.ndarray, top_p: float) -> None:
    """Keeps the smallest set of most likely tokens whose mass reaches top_p (the token that
    crosses top_p stays)."""
    target = top_p * probs.sum()
    k = min(TOP_P_CANDIDATES, probs.shape[0])
    candidates = np.argpartition(-probs, k - 1)[:k] if k < probs.shape[0] else np.arange(k)
    if probs[candidates].sum() < target:
        candidates = np.arange(probs.shape[0])
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    keep = int(np.searchsorted(np.cumsum(probs[order]), target, side="left")) + 1
    kept = order[:keep]
    saved = probs[kept]
    probs[:] = 0.0
    probs[kept] = saved


def weights_(logits: np.ndarray, maxima: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Each row r of `logits` ([rows, vocab], float32, C-contiguous), in place, to
    exp((logits[r] - maxima[r]) / temperatures[r]) with maxima[r] the row's maximum: its softmax
    at that temperature times a factor, which neither the filters nor the draw need removed.
    (numpy's max vectorizes where numba's does not.)"""
    exp_rows_(logits, maxima, temperatures)
    return logits


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True, parallel=True)
def exp_rows_(x, maxima, temperatures):
    for r in prange(x.shape[0]):
        row, top, t = x[r], maxima[r], temperatures[r]
        for j in range(row.shape[0]):
            row[j] = exp32((row[j] - top) / t)


def sample_from_probs(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling, one uniform per row; never picks a zero-probability token. (The
    plain numpy reference of `draw`, which the sampler uses.)"""
    cdf = np.cumsum(probs, axis=-1, dtype=np.float64)
    # Rounding can put a target at the very top of the CDF, past every token: keep it just below,
    # so it lands where the CDF last rises (a token whose probability is not zero).
    targets = np.minimum(uniforms * cdf[:, -1], np.nextafter(cdf[:, -1], 0.0))
    return np.minimum((cdf <= targets[:, None]).sum(axis=-1), probs.shape[-1] - 1)


def draw(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """`sample_from_probs`, compiled: for each row of `probs` ([rows, vocab], >= 0, any total),
    the first token whose running sum passes uniforms[row] * the row's total; never a
    zero-probability token. Sums in float64, so it can part from the reference only where a
    target lies within rounding of where the running sum passes it."""
    out = np.empty(probs.shape[0], np.int64)
    draw_(probs, np.asarray(uniforms, np.float64), out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def draw_(probs, uniforms, out):
    for r in prange(probs.shape[0]):
        out[r] = draw_row(probs[r], uniforms[r])


@njit(cache=True, nogil=True)
def draw_row(p, u):
    v = p.shape[0]
    sums = np.empty((v + DRAW_BLOCK - 1) // DRAW_BLOCK)
    for b in range(sums.shape[0]):
        sums[b] = block_sum(p[b * DRAW_BLOCK:(b + 1) * DRAW_BLOCK])
    block, below, target = find_block(sums, u)
    if block < 0:
        return v - 1
    start = block * DRAW_BLOCK
    return start + find_token(p[start:start + DRAW_BLOCK], below, target)


@njit(cache=True, nogil=True)
def find_block(sums, u):
    """(block, running sum before it, target): the block where the running sum of `sums`
    passes u * their total; if rounding put the target at the top, the last block that holds
    any probability; block -1 if none does."""
    total = 0.0
    for s in sums:
        total += s
    target = u * total
    below, last = 0.0, -1
    for b in range(sums.shape[0]):
        if sums[b] > 0:
            last = b
        if below + sums[b] > target:
            break
        below += sums[b]
    return last, below, target


@njit(cache=True, nogil=True)
def find_token(block, below, target):
    """Token by token inside the block: a running sum that passes the target has just added a
    token whose probability is not zero; if the block's own rounding never passes it, its last
    such."""
    running, nonzero = below, -1
    for j, q in enumerate(block):
        if q > 0:
            nonzero = j
            running += q
            if running > target:
                break
    return nonzero


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def block_sum(block):
    """(A slice, not bounds into the row, indexed by a range from zero: that is what lets the
    sum vectorize; iterating over the slice's elements did not.)"""
    s = 0.0
    for j in range(block.shape[0]):
        s += block[j]
    return s


def sample_softmax(logits: np.ndarray, maxima: np.ndarray, temperatures: np.ndarray,
                   uniforms: np.ndarray) -> np.ndarray:
    """`draw(weights_(logits, maxima, temperatures), uniforms)` for rows no filter changes, in
    one compiled pass that reads each row once and writes nothing back: the block sums of the
    weights (each block's weights in a small buffer), then the weights of the one block where
    the running sum passes the target, computed again: two passes fewer over a batch's logits,
    which a large batch reads from memory, not cache. `logits` is left as it was."""
    out = np.empty(logits.shape[0], np.int64)
    sample_softmax_(logits, maxima, temperatures, np.asarray(uniforms, np.float64), out)
    return out


@njit(cache=True, nogil=True, parallel=True)
def sample_softmax_(x, maxima, temperatures, uniforms, out):
    for r in prange(x.shape[0]):
        out[r] = sample_softmax_row(x[r], maxima[r], temperatures[r], uniforms[r])


@njit(cache=True, nogil=True)
def sample_softmax_row(row, top, t, u):
    v = row.shape[0]
    sums = np.empty((v + DRAW_BLOCK - 1) // DRAW_BLOCK)
    weights = np.empty(DRAW_BLOCK, np.float32)  # one block's, in L1: the loops vectorize
    for b in range(sums.shape[0]):
        block = row[b * DRAW_BLOCK:(b + 1) * DRAW_BLOCK]
        exp_into(block, top, t, weights)
        sums[b] = block_sum(weights[:block.shape[0]])
    block, below, target = find_block(sums, u)
    if block < 0:
        return v - 1
    start = block * DRAW_BLOCK
    n = exp_into(row[start:start + DRAW_BLOCK], top, t, weights)
    return start + find_token(weights[:n], below, target)


@njit(fastmath=KERNEL_MATH, cache=True, nogil=True)
def exp_into(block, top, t, out):
    """exp_rows_'s weights of a slice into out[:len(block)]; returns len(block)."""
    for j in range(block.shape[0]):
        out[j] = exp32((block[j] - top) / t)
    return block.shape[0]


def compile_draw() -> None:
    """Compiles the sampler's kernels for float32 rows now (or loads them from numba's cache),
    at engine start."""
    logits, maxima, temps = np.zeros((1, 2), np.float32), np.zeros(1, np.float32), np.ones(1, np.float32)
    sample_softmax(logits, maxima, temps, np.zeros(1))
    draw(weights_(logits, maxima, temps), np.zeros(1))


def sample(logits: np.ndarray, seqs: list[SequenceState], num_output_tokens: list[int],
           eos_token_id: int | list[int]) -> tuple[np.ndarray, list[TokenLogprobs | None]]:
    """Next token for each row of `logits` ([len(seqs), vocab], overwritten), and logprobs
    where asked. `eos_token_id`: the model's EOS, or a list of them (each is banned before
    min_tokens)."""
    want_logprobs = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    raw_logprobs = log_softmax(logits[want_logprobs]) if want_logprobs else None
    adjust_logits_(logits, seqs, num_output_tokens, eos_token_id)
    for row, seq in zip(logits, seqs):
        if seq.grammar is not None:  # ban what the grammar does not allow next
            seq.grammar.mask_logits_(row)
    greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    tokens = np.zeros(len(seqs), np.int64)
    if greedy:  # (a batch of one kind is taken whole: indexing rows would copy them)
        tokens[greedy] = (logits if not sampled else logits[greedy]).argmax(axis=-1)
    if sampled:
        temps = np.clip([seqs[i].params.temperature for i in sampled],
                        MIN_TEMPERATURE, MAX_TEMPERATURE).astype(np.float32)
        rows = logits if not greedy and logits.flags.c_contiguous else logits[sampled]
        maxima = rows.max(axis=-1)
        uniforms = np.array([seqs[i].rng.random() for i in sampled])
        if not any(filters_probs(seqs[i].params) for i in sampled):
            tokens[sampled] = sample_softmax(rows, maxima, temps, uniforms)
        else:  # the rows become their probabilities, filtered (a copy only in a mixed batch)
            probs = weights_(rows, maxima, temps)
            for row, i in zip(probs, sampled):
                p = seqs[i].params
                filter_probs_(row, p.top_k, p.top_p, p.min_p)
            tokens[sampled] = draw(probs, uniforms)
    logprobs: list[TokenLogprobs | None] = [None] * len(seqs)
    for j, i in enumerate(want_logprobs):
        logprobs[i] = token_logprobs(raw_logprobs[j], int(tokens[i]), seqs[i].params.logprobs)
    return tokens, logprobs
