"""The engine with a prefix cache directory: a later engine (a restart) reads back the blocks an
earlier one computed, counts them as cached, computes only the rest, and produces exactly what
an engine without the directory produces. Anything that changes K/V finds nothing to reuse."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from nanovllm import EngineConfig, LLMEngine, SamplingParams, TokensPrompt
from nanovllm.block_manager import chain_hash
from nanovllm.model import write_dummy_checkpoint

BLOCK = 4
PROMPT = np.random.default_rng(5).integers(0, 1000, 4 * BLOCK * 10 + 3).tolist()  # 40 full blocks
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)


def generate(engine, request_id, prompt, params=GREEDY):
    """The final output, and the tokens the first step computed."""
    engine.add_request(request_id, prompt, params)
    outputs = engine.step()
    computed = engine.last_step.num_prefill_tokens
    while engine.has_unfinished_requests():
        outputs += engine.step()
    return outputs[-1], computed


def written(engine) -> int:
    tier = engine.block_manager.lower_tier
    tier.store.flush()  # the writer runs beside the steps; a test waits for it
    return tier.stats.writes


def test_a_restarted_engine_reads_the_prompt_back_and_answers_the_same(make_engine, tmp_path):
    # The reference computes the prompt whole, then again from its own memory's prefix cache:
    # the restarted engine's rows are then computed in the same chunks (a linear layer may take
    # another kernel at another row count, OpenBLAS above 64 rows on AVX2, so other bits).
    without_dir = make_engine(block_size=BLOCK)
    reference, _ = generate(without_dir, "r", PROMPT)
    reference_cached, computed = generate(without_dir, "r2", PROMPT)
    assert computed == len(PROMPT) - (len(PROMPT) - 1) // BLOCK * BLOCK
    first = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    out, computed = generate(first, "a", PROMPT)
    assert computed == len(PROMPT) and out.num_cached_tokens == 0
    assert written(first) >= (len(PROMPT) - 1) // BLOCK

    restarted = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    again, computed = generate(restarted, "b", PROMPT)
    cached = (len(PROMPT) - 1) // BLOCK * BLOCK
    assert again.num_cached_tokens == cached and computed == len(PROMPT) - cached
    stats = restarted.get_stats()
    assert stats.prefix_cache_hits == cached
    assert stats.prefix_cache_disk.hits == cached // BLOCK and stats.prefix_cache_disk.invalid == 0
    for ours, theirs in ((out, reference), (again, reference_cached)):
        assert ours.outputs[0].token_ids == theirs.outputs[0].token_ids
        assert ours.outputs[0].logprobs == theirs.outputs[0].logprobs
    assert again.outputs[0].token_ids == reference.outputs[0].token_ids
    assert sum(restarted.snapshot().blocks.loaded) == cached // BLOCK  # the engine view marks them


def test_a_prompt_sharing_only_a_prefix_reads_just_that_prefix(make_engine, tmp_path):
    first = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    generate(first, "a", PROMPT)
    written(first)
    other = PROMPT[:5 * BLOCK + 2] + [999] * (3 * BLOCK)
    reference, _ = generate(make_engine(block_size=BLOCK), "r", other)
    out, computed = generate(make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path)), "b",
                             other)
    assert out.num_cached_tokens == 5 * BLOCK and computed == len(other) - 5 * BLOCK
    assert out.outputs[0].token_ids == reference.outputs[0].token_ids


@pytest.mark.parametrize("change", [dict(kv_cache_dtype="float16"), dict(dtype="bfloat16"),
                                    dict(quantization="int8"), dict(seed=1, load_format="dummy"),
                                    dict(block_size=2 * BLOCK)])
def test_what_changes_kv_reuses_nothing(make_engine, tmp_path, change):
    base = dict(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    first = make_engine(**base)
    generate(first, "a", PROMPT)
    written(first)
    changed = make_engine(**{**base, **change})
    out, _ = generate(changed, "b", PROMPT)
    assert out.num_cached_tokens == 0
    stats = changed.get_stats().prefix_cache_disk
    assert stats.hits == 0 and stats.invalid == 0


def test_another_checkpoint_reuses_nothing(make_engine, tmp_path, tmp_path_factory):
    first = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    generate(first, "a", PROMPT)
    written(first)
    # The same shapes and config, other weights.
    other_dir = write_dummy_checkpoint(tmp_path_factory.mktemp("other"), "gpt2", seed=7,
                                       n_layer=2, n_embd=64, n_head=4, vocab_size=1024,
                                       n_positions=256)
    other = LLMEngine(EngineConfig(model=str(other_dir), block_size=BLOCK, num_kv_blocks=256,
                                   prefix_cache_dir=str(tmp_path)))
    out, _ = generate(other, "b", PROMPT)
    assert out.num_cached_tokens == 0


def test_corrupted_and_truncated_blocks_are_recomputed(make_engine, tmp_path, caplog):
    reference, _ = generate(make_engine(block_size=BLOCK), "r", PROMPT)
    first = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    generate(first, "a", PROMPT)
    written(first)
    files = list(tmp_path.rglob("*.kvb"))
    store = first.block_manager.lower_tier.store
    # The 4th block of the prompt is corrupted, the 8th truncated: the read stops at the 4th.
    h, paths = None, []
    for i in range(8):
        h = chain_hash(PROMPT[i * BLOCK:(i + 1) * BLOCK], h)
        paths.append(store.path_of(h.to_bytes(16, "little")))
    assert set(paths) <= set(files)
    data = bytearray(paths[3].read_bytes())
    data[100] ^= 0xFF
    paths[3].write_bytes(bytes(data))
    paths[7].write_bytes(paths[7].read_bytes()[:50])
    restarted = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    out, computed = generate(restarted, "b", PROMPT)
    assert out.num_cached_tokens == 3 * BLOCK and computed == len(PROMPT) - 3 * BLOCK
    assert out.outputs[0].token_ids == reference.outputs[0].token_ids
    assert restarted.get_stats().prefix_cache_disk.invalid == 1
    written(restarted)  # the recomputed blocks are written again, whole
    third = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    out, _ = generate(third, "c", PROMPT)
    assert out.num_cached_tokens == (len(PROMPT) - 1) // BLOCK * BLOCK
    assert third.get_stats().prefix_cache_disk.invalid == 0  # both were written again
    assert out.outputs[0].token_ids == reference.outputs[0].token_ids


def damage(root: Path, how: str) -> int:
    """Damages every file (or every folder at one depth) under `root` as `how` says; returns how
    many entries were damaged."""
    entries = sorted(root.rglob("*"), key=lambda p: -len(p.parts))  # deepest first
    if how.startswith("file for"):
        depth = len(root.parts) + (2 if how == "file for a block folder" else 1)
        folders = [p for p in entries if p.is_dir() and len(p.parts) == depth]
        for folder in folders:
            shutil.rmtree(folder)
            folder.write_bytes(b"\xc6\x00 not a folder")
        return len(folders)
    files = [p for p in entries if p.is_file()]
    for path in files:
        data = bytearray(path.read_bytes())
        if how == "flipped bytes":
            for i in range(0, len(data), 7):
                data[i] ^= 0xA5
        elif how == "truncated":
            data = data[:len(data) // 2]
        elif how == "not UTF-8":
            data = bytearray(b"\xc6" * len(data))
        elif how == "empty":
            data = bytearray()
        path.unlink()
        if how == "a folder":
            path.mkdir()
        elif how == "a FIFO":  # read blindly, it would never answer
            os.mkfifo(path)
        elif how == "a link to itself":
            path.symlink_to(path.name)
        else:
            path.write_bytes(bytes(data))
    return len(files)


@pytest.mark.parametrize("how", ["flipped bytes", "truncated", "not UTF-8", "empty", "a folder",
                                 "a FIFO", "a link to itself", "file for a block folder",
                                 "file for a top folder"])
def test_a_damaged_directory_never_stops_the_engine(make_engine, tmp_path, caplog, how):
    """Every file the directory holds (block files, the checkpoint digests under checkpoints/)
    and every folder is untrusted: damaged, each costs at most a warning and a recomputation,
    and the next start finds the directory whole again."""
    reference, _ = generate(make_engine(block_size=BLOCK), "r", PROMPT)
    first = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    generate(first, "a", PROMPT)
    written(first)
    first.block_manager.lower_tier.close()
    assert list(tmp_path.glob("checkpoints/*")) and list(tmp_path.rglob("*.kvb"))
    damaged = damage(tmp_path, how)
    assert damaged > 0

    with caplog.at_level(logging.WARNING, logger="nanovllm"):
        restarted = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
        out, _ = generate(restarted, "b", PROMPT)
        assert out.outputs[0].token_ids == reference.outputs[0].token_ids
        written(restarted)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and "RANDOM weights" not in r.getMessage()]
    assert all("prefix cache directory" in w for w in warnings), warnings
    assert 0 < len(warnings) <= damaged

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nanovllm"):
        third = make_engine(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
        out, _ = generate(third, "c", PROMPT)
    assert out.num_cached_tokens == (len(PROMPT) - 1) // BLOCK * BLOCK  # healed
    assert out.outputs[0].token_ids == reference.outputs[0].token_ids
    assert third.get_stats().prefix_cache_disk.invalid == 0
    assert not [r for r in caplog.records if "prefix cache directory" in r.getMessage()
                and r.levelno >= logging.WARNING]


def test_the_python_api(make_llm, tmp_path):
    prompt = TokensPrompt(prompt_token_ids=PROMPT)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    first = make_llm(block_size=BLOCK, prefix_cache_dir=str(tmp_path))
    [a] = first.generate(prompt, params, use_tqdm=False)
    first.engine.block_manager.lower_tier.store.flush()
    [b] = make_llm(block_size=BLOCK, prefix_cache_dir=str(tmp_path)).generate(prompt, params,
                                                                               use_tqdm=False)
    assert b.num_cached_tokens > 0 and a.num_cached_tokens == 0
    assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_options_are_checked_at_start(make_engine, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        make_engine(prefix_cache_dir=str(tmp_path / "file"))
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        make_engine(prefix_cache_dir=str(tmp_path), enable_prefix_caching=False)
    with pytest.raises(ValueError, match="prefix_cache_dir_max_gb"):
        make_engine(prefix_cache_dir=str(tmp_path), prefix_cache_dir_max_gb=0)
