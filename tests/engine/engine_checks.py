"""Helpers shared by the engine tests: invariant checks, a step loop, transformers references."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from nanovllm import LLMEngine, RequestOutput
from nanovllm.block_manager import BlockManager
from nanovllm.sequence import Sequence


def check_block_invariants(bm: BlockManager, running: list[Sequence], waiting: list[Sequence]) -> None:
    """Reference counts equal table membership; free blocks are unowned; only full, hashed blocks
    holding the same tokens are shared; waiting sequences hold nothing."""
    for seq in waiting:
        assert seq.block_table == [] and seq.num_computed_tokens == 0, "a waiting sequence holds KV"
    owners = Counter()
    for seq in running:
        assert len(set(seq.block_table)) == len(seq.block_table), "a block twice in one table"
        assert seq.num_computed_tokens <= len(seq.block_table) * bm.block_size
        owners.update(seq.block_table)
    for block in bm.blocks:
        assert block.ref_count == owners[block.block_id], f"block {block.block_id}: ref_count"
        assert (block.block_id in bm.free_block_ids) == (block.ref_count == 0), \
            f"block {block.block_id}: free list disagrees with ref_count {block.ref_count}"
    bs = bm.block_size
    holders: dict[int, set] = {}
    for seq in running:
        for block_id in seq.block_table:
            holders.setdefault(block_id, set()).add(seq.request.request_id)
    for seq in running:
        for i, block_id in enumerate(seq.block_table):
            if owners[block_id] > 1:
                block = bm.blocks[block_id]
                if seq.request.group is not None and holders[block_id] == {seq.request.request_id}:
                    # Beams of one search share what their parent held, the partly filled last
                    # block too (until one writes into it: then it is copied).
                    assert (i + 1) * bs <= seq.num_computed_tokens or i == len(seq.block_table) - 1
                    continue
                assert block.hash is not None, f"block {block_id} shared but not a cached block"
                assert block.token_ids == tuple(seq.token_ids[i * bs:(i + 1) * bs])
                assert (i + 1) * bs <= seq.num_computed_tokens
    for h, block_id in bm.hash_to_block_id.items():
        assert bm.blocks[block_id].hash == h


def check_engine_invariants(engine: LLMEngine) -> None:
    sched = engine.scheduler
    check_block_invariants(engine.block_manager, sched.running, list(sched.waiting))
    stats = engine.get_stats()
    used = {b for s in sched.running for b in s.block_table}
    assert stats.num_free_blocks + len(used) == stats.num_total_blocks
    assert len(sched.running) <= engine.config.max_num_seqs
    # Requests, counted from the queues: running if any sample runs, else waiting.
    running = {s.request.request_id for s in sched.running}
    waiting = {s.request.request_id for s in sched.waiting} - running
    assert (stats.num_running, stats.num_waiting) == (len(running), len(waiting))


def run_engine(engine: LLMEngine, max_steps: int = 10_000) -> dict[str, list[RequestOutput]]:
    """Steps until every request is done; returns each request's outputs in step order."""
    history: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished_requests():
            return history
        for out in engine.step():
            history.setdefault(out.request_id, []).append(out)
    raise AssertionError(f"requests still unfinished after {max_steps} steps")


def random_prompts(seed: int, count: int, low: int, high: int, vocab: int = 1000) -> list[list[int]]:
    """Token-id prompts of lengths in [low, high] (ids below 1000: never the tiny model's EOS)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, int(rng.integers(low, high + 1))).tolist() for _ in range(count)]


def hf_greedy(hf, prompt: list[int], num_tokens: int) -> list[int]:
    """transformers' greedy continuation of one prompt, exactly `num_tokens` long."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=num_tokens, min_new_tokens=num_tokens,
                          pad_token_id=hf.config.eos_token_id)
    return out[0, len(prompt):].tolist()


def hf_logprobs(hf, token_ids: list[int]) -> np.ndarray:
    """log-softmax of transformers' logits at every position of `token_ids` ([len, vocab])."""
    with torch.no_grad():
        logits = hf(torch.tensor([token_ids])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def worst_logprob_error(hf, prompts: list[list[int]], outputs: list[RequestOutput]) -> float:
    """The largest |logprob - transformers' logprob| over every sampled token and every scored
    prompt token of `outputs` (requests with logprobs and prompt_logprobs on)."""
    worst = 0.0
    for prompt, out in zip(prompts, outputs):
        tokens = out.outputs[0].token_ids
        ref = hf_logprobs(hf, prompt + tokens)
        for i, (token, entry) in enumerate(zip(tokens, out.outputs[0].logprobs)):
            worst = max(worst, abs(entry[token].logprob - ref[len(prompt) - 1 + i, token]))
        for pos in range(1, len(prompt)):
            worst = max(worst, abs(out.prompt_logprobs[pos][prompt[pos]].logprob
                                   - ref[pos - 1, prompt[pos]]))
    return worst
