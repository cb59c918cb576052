"""The summed stats of several replicas (RayEngineClient.stats): counts add up, the
step-size histogram bucket by bucket, and the KV cache's configuration is each replica's own
(not a sum). No Ray instance is started: the combination is plain arithmetic."""

from __future__ import annotations

from dataclasses import MISSING, fields, replace

from nanovllm.server.ray.client import _combined
from nanovllm.stats import ITERATION_TOKENS_BUCKETS, EngineStats


def stats(**kw) -> EngineStats:
    zeros = {f.name: 0 for f in fields(EngineStats) if f.default is MISSING}  # the required
    return replace(EngineStats(**zeros), **kw)


def test_replica_stats_combine():
    width = len(ITERATION_TOKENS_BUCKETS) + 1
    a = stats(num_running=2, iteration_tokens=(1,) * width, iteration_tokens_sum=10,
              block_size=16, kv_cache_dtype="auto", enable_prefix_caching=True)
    b = stats(num_running=3, iteration_tokens=(2,) * width, iteration_tokens_sum=5,
              block_size=16, kv_cache_dtype="auto", enable_prefix_caching=True)
    total = {f.name: _combined(f.name, [getattr(a, f.name), getattr(b, f.name)])
             for f in fields(EngineStats)}
    assert total["num_running"] == 5 and total["iteration_tokens_sum"] == 15
    assert total["iteration_tokens"] == (3,) * width
    assert (total["block_size"], total["kv_cache_dtype"], total["enable_prefix_caching"]) == \
        (16, "auto", True)
    assert _combined("block_size", []) == 0 and _combined("num_running", []) == 0
