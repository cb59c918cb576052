"""Prefix-cache hit rate of N engine replicas on Ray Serve: prefix-affinity routing against
plain power of two choices, on a shared-prefix workload.

    python -m nanovllm.scripts.lab.ray_prefix_affinity                 # tiny random model, 2 replicas
    python -m nanovllm.scripts.lab.ray_prefix_affinity --model gpt2 --load-format dummy

Workload: --groups distinct prefixes of --prefix-len tokens, --per-group requests each (the
prefix plus --suffix-len tokens of its own), in a seeded random order, --concurrency at a time.
Both runs deploy fresh replicas (empty caches) on one local Ray instance and send the same
requests. Hit rate = prefix-cache hits / queries, in tokens, summed over the replicas. The ideal
is each prefix computed once: (per_group - 1) / per_group of the prefix tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile

from nanovllm import EngineConfig, SamplingParams
from nanovllm.engine_client import QueueSink


def workload(args) -> list[list[int]]:
    rng = random.Random(args.seed)
    vocab = 1000  # below every GPT-2 vocabulary, the tiny one's included
    prefixes = [[rng.randrange(vocab) for _ in range(args.prefix_len)] for _ in range(args.groups)]
    prompts = [p + [rng.randrange(vocab) for _ in range(args.suffix_len)]
               for p in prefixes for _ in range(args.per_group)]
    rng.shuffle(prompts)
    return prompts


async def run_one(client, request_id: str, prompt: list[int], params: SamplingParams) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    request = client.processor.process(request_id, prompt, params)
    await asyncio.wrap_future(client.add_request(
        request, QueueSink(asyncio.get_running_loop(), queue, 0)))
    while True:
        _, item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        if item.finished:
            return


async def run_all(client, prompts: list[list[int]], concurrency: int) -> None:
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    gate = asyncio.Semaphore(concurrency)

    async def bounded(i: int, prompt: list[int]) -> None:
        async with gate:
            await run_one(client, f"req-{i}", prompt, params)

    await asyncio.gather(*(bounded(i, p) for i, p in enumerate(prompts)))


def measure(config: EngineConfig, args, affinity: bool) -> dict:
    from ray import serve

    from nanovllm.server.ray.client import RayEngineClient, deploy

    # One application per policy: a handle's router is made once per deployment and process.
    name = "affinity" if affinity else "power-of-two"
    handle = deploy(config, args.replicas, 1, affinity=affinity, app_name=name)
    client = RayEngineClient(handle, handle.describe.remote().result(), args.replicas,
                             app_name=name,
                             teardown=lambda: serve.delete(name))  # Ray stays up
    try:
        asyncio.run(run_all(client, workload(args), args.concurrency))
        per_replica = {r: (s.prefix_cache_hits, s.prefix_cache_queries)
                       for r, s in client.replica_stats.items()}
    finally:
        client.shutdown()
    hits = sum(h for h, _ in per_replica.values())
    queries = sum(q for _, q in per_replica.values())
    return {"hit_rate": hits / queries, "hits": hits, "queries": queries,
            "per_replica": per_replica}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default: a tiny random GPT-2)")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--per-group", type=int, default=8)
    p.add_argument("--prefix-len", type=int, default=64)
    p.add_argument("--suffix-len", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import ray

    from nanovllm.model import write_dummy_checkpoint

    model = args.model or str(write_dummy_checkpoint(
        tempfile.mkdtemp(prefix="nanovllm-tiny-"), "gpt2", n_layer=2, n_embd=64, n_head=4,
        vocab_size=1024, n_positions=256))
    config = EngineConfig(model, load_format=args.load_format, num_kv_blocks=1024)
    ray.init(num_cpus=max(args.replicas, os.cpu_count() or 1), include_dashboard=False,
             _node_ip_address="127.0.0.1", object_store_memory=128 * 2**20, log_to_driver=False)
    try:
        results = {name: measure(config, args, affinity)
                   for name, affinity in (("prefix affinity", True), ("power of two", False))}
    finally:
        ray.shutdown()
    cacheable = args.prefix_len // config.block_size * config.block_size  # whole blocks only
    ideal = (args.per_group - 1) / args.per_group * cacheable / (args.prefix_len + args.suffix_len)
    print(f"{args.replicas} replicas, {args.groups} prefixes x {args.per_group} requests, "
          f"prefix {args.prefix_len} + suffix {args.suffix_len} tokens, "
          f"concurrency {args.concurrency}; ideal hit rate {ideal:.1%}")
    for name, r in results.items():
        split = ", ".join(f"{h}/{q}" for h, q in r["per_replica"].values())
        print(f"  {name:16s} hit rate {r['hit_rate']:6.1%}  ({r['hits']}/{r['queries']} tokens; "
              f"per replica {split})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
