"""A verifying step's rows are attended by the paged decode kernel, each row one query with its
own causal context length (`MAX_DECODE_RUN`): the logits are those of the same rows attended
the prefill way (the context gathered from the cache, `causal_attention`), on GPT-2, grouped-query
Llama and Mistral with a sliding window shorter than the context, float32 and float16 caches.
In the engine, a step's verify rows are counted as decode rows and never as a prefill chunk."""

from __future__ import annotations

import numpy as np
import pytest
from test_spec_engine import NGRAM, REPEATS

from nanovllm import LLM, SamplingParams
from nanovllm.contract.step import ScheduledSequence
from nanovllm.model import AttentionBatch
from nanovllm.model.layers.attention import MAX_DECODE_RUN

BLOCK = 4
PROMPT = 21  # crosses Mistral's window (12) and several blocks


def runner_of(make_llm, llama_ckpt, model: str, kv_cache_dtype: str):
    options = dict(block_size=BLOCK, num_kv_blocks=64, kv_cache_dtype=kv_cache_dtype)
    if model == "gpt2":
        return make_llm(**options).engine.runner
    return LLM(str(llama_ckpt(model)), **options).engine.runner


def forward(runner, inputs, attention: AttentionBatch) -> np.ndarray:
    rows = np.arange(len(inputs.token_ids))
    return runner.model.forward(runner.weights, runner.cfg, inputs.token_ids, inputs.positions,
                                runner.kv_cache.layers, attention, rows)


def as_prefills(runner, inputs) -> AttentionBatch:
    """The step's rows, each sequence's run attended as a prefill chunk over its cached context."""
    prefills, row = [], 0
    for e in inputs.entries:
        n = len(e.token_ids) + len(inputs.lookahead.get(e.seq_id, ()))
        prefills.append((row, row + n, runner.slots(e.block_table, np.arange(e.start + n))))
        row += n
    a = inputs.attention
    return AttentionBatch(a.slot_mapping, 0, a.block_size, np.zeros((0, 1), np.int64),
                          np.zeros(0, np.int64), prefills)


@pytest.mark.parametrize("kv_cache_dtype", ["float32", "float16"])
@pytest.mark.parametrize("model", ["gpt2", "llama-gqa", "mistral-window"])
def test_verify_rows_match_prefill_attention(make_llm, llama_ckpt, model, kv_cache_dtype):
    runner = runner_of(make_llm, llama_ckpt, model, kv_cache_dtype)
    rng = np.random.default_rng(1)
    vocab = runner.cfg.vocab_size
    blocks = list(rng.permutation(64))  # shuffled: a table is not contiguous
    tables = [[int(blocks.pop()) for _ in range(8)] for _ in range(3)]
    prompts = [rng.integers(0, vocab, PROMPT - i).tolist() for i in range(3)]
    # First the prompts, each a prefill, filling the cache.
    fill = runner.prepare([ScheduledSequence(i, p, 0, t, True, 0)
                           for i, (p, t) in enumerate(zip(prompts, tables))])
    assert fill.attention.num_decodes == 0
    forward(runner, fill, fill.attention)
    # Then one step: sequence 0 verifies MAX_DECODE_RUN - 1 proposals, sequence 1 decodes,
    # sequence 2 verifies one.
    step = [ScheduledSequence(i, [int(rng.integers(vocab))], len(p), t, True, len(p))
            for i, (p, t) in enumerate(zip(prompts, tables))]
    lookahead = {0: rng.integers(0, vocab, MAX_DECODE_RUN - 1).tolist(),
                 2: [int(rng.integers(vocab))]}
    inputs = runner.prepare(step, lookahead)
    assert inputs.attention.num_decodes == MAX_DECODE_RUN + 1 + 2
    assert inputs.attention.prefills == []
    got = forward(runner, inputs, inputs.attention)
    want = forward(runner, inputs, as_prefills(runner, inputs))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_engine_attends_verify_rows_as_decodes(make_engine):
    k = MAX_DECODE_RUN - 1
    engine = make_engine(speculative_config={**NGRAM, "num_speculative_tokens": k},
                         block_size=BLOCK)
    engine.runner.keep_last_run = True
    for i, prompt in enumerate(REPEATS):
        engine.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=12,
                                                          ignore_eos=True))
    verified = 0
    while engine.has_unfinished_requests():
        engine.step()
        inputs, _ = engine.runner.last_run
        rows = {e.seq_id: len(e.token_ids) + len(inputs.lookahead.get(e.seq_id, ()))
                for e in inputs.entries}
        decoding = {e.seq_id for e in inputs.entries
                    if len(e.token_ids) == 1 and rows[e.seq_id] <= MAX_DECODE_RUN}
        if not inputs.lookahead:
            continue
        verified += 1
        assert all(rows[i] <= MAX_DECODE_RUN for i in inputs.lookahead)
        short = sum(rows[i] for i in decoding)
        attention = inputs.attention
        assert attention.num_decodes == short
        assert len(attention.prefills) == len(rows) - len(decoding)  # prompt chunks among them
        # Row i of a run from position p attends p + i + 1 positions.
        assert attention.decode_context_lens.tolist() == (inputs.positions[:short] + 1).tolist()
    assert verified > 0


def test_longer_verify_runs_are_prompt_chunks_and_decode_alike(make_engine):
    """k = MAX_DECODE_RUN proposals make runs one row longer than the decode kernel takes: they
    are attended as chunks (their context gathered), and greedy output is plain decoding's."""
    def run(engine):
        engine.runner.keep_last_run = True
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        for i, prompt in enumerate(REPEATS):
            engine.add_request(str(i), prompt, params)
        done, chunks = {}, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0].token_ids
            inputs, _ = engine.runner.last_run
            chunks += sum(len(inputs.lookahead.get(e.seq_id, ())) + 1 > MAX_DECODE_RUN
                          for e in inputs.entries)
        return done, chunks
    spec, long_runs = run(make_engine(speculative_config={
        **NGRAM, "num_speculative_tokens": MAX_DECODE_RUN}, block_size=BLOCK))
    plain, _ = run(make_engine(block_size=BLOCK))
    assert long_runs > 0
    assert spec == plain
