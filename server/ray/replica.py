"""One engine replica of a Ray Serve deployment, and the prefix-affinity router in front of them.

Each replica is a Ray actor that owns one LLMEngine on its own thread, exactly as `nanovllm
serve` does (an AsyncEngine). `generate` streams one request's outputs back through Ray as
they come, coalesced if the caller falls behind (outputs are cumulative). Nothing here knows
HTTP: the ingress (ray/client.RayEngineClient under the usual FastAPI app) does.

Imported only when --data-parallel-size is given: it imports Ray.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numba
from ray import serve
from ray.serve.request_router import (
    MultiplexMixin,
    PendingRequest,
    RequestRouter,
    RunningReplica,
)

from nanovllm import EngineConfig
from nanovllm.async_engine import AsyncEngine
from nanovllm.engine_client import QueueSink, RequestAborted
from nanovllm.model.checkpoint.pooling_config import PoolingConfig
from nanovllm.stats import EngineStats
from nanovllm.values.request import EngineRequest

# tokenizer_config.json: the chat template, special tokens and BOS rule the ingress renders with.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


@dataclass(slots=True)
class ReplicaInfo:
    """What the ingress needs to check and tokenize requests without an engine of its own."""

    replica_id: str
    pid: int
    threads: int  # numba's thread pool, sized to the replica's CPUs
    model_path: str
    is_dummy: bool  # random weights: the text is noise
    max_model_len: int
    vocab_size: int
    block_size: int
    num_kv_blocks: int
    max_waiting_seqs: int
    eos_token_id: int
    tokenizer_files: dict[str, bytes]  # shipped: the ingress may run on another machine
    # A pooling model's (embeddings, scores): what the ingress checks its requests with.
    pooling: PoolingConfig | None
    hidden_size: int
    is_cross_encoder: bool
    scheduling_policy: str  # which `priority` values requests may have


class EngineReplica:
    """The Ray Serve deployment class (wrapped by serve.deployment in ray/client.deploy).
    A subclass serves several models (ray/multiplex.py) by choosing the engine of each call
    (`engine_of_call`)."""

    def __init__(self, config: EngineConfig) -> None:
        self._loop = AsyncEngine.from_config(config)  # loaded on the thread that steps it
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    async def engine_of_call(self) -> AsyncEngine:
        """The engine that serves the current call: this replica's one."""
        return self._loop

    async def describe(self) -> ReplicaInfo:
        return self.info((await self.engine_of_call()).engine)

    def info(self, engine) -> ReplicaInfo:
        tok_dir = Path(engine.config.tokenizer or engine.model_path)
        files = {n: (tok_dir / n).read_bytes() for n in TOKENIZER_FILES if (tok_dir / n).exists()}
        return ReplicaInfo(self.replica_id, os.getpid(), numba.get_num_threads(),
                           str(engine.model_path), engine.is_dummy,
                           engine.max_model_len, engine.vocab_size, engine.config.block_size,
                           engine.num_kv_blocks, engine.config.max_waiting_seqs,
                           engine.tokenizer.eos_token_id, files, engine.pooling,
                           engine.model_config.n_embd,
                           getattr(engine.model_config, "is_classifier", False),
                           engine.config.scheduling_policy)

    async def generate(self, request: EngineRequest, avoid: tuple[str, ...] = ()):
        """Yields (replica_id, items, stats): first ([], ...) once the engine took the request,
        then RequestOutputs; or one exception, first if the engine did not take it.

        `avoid` is for the router (PrefixAffinityRouter): the replicas that refused this
        request already, their queue full.

        Exceptions travel as items, not raised, so the ingress gets the engine's own error
        types back; a cancelled call (client gone, ingress abort) aborts the engine request.
        `stats` is (when, EngineStats): the streams of concurrent requests may arrive in
        any order, so the ingress keeps the latest snapshot by `when`.
        """
        queue: asyncio.Queue = asyncio.Queue()
        sink = QueueSink(asyncio.get_running_loop(), queue, 0)
        try:
            loop = await self.engine_of_call()
        except RequestAborted as exc:  # its model could not be loaded here (ray/multiplex.py)
            yield self.replica_id, [exc], (-1, None)  # (no stats: older than any kept)
            return
        try:
            await asyncio.wrap_future(loop.add_request(request, sink))
        except Exception as exc:  # QueueFullError, EngineDeadError, RequestAborted
            yield self.replica_id, [exc], self._stats(loop)
            return
        yield self.replica_id, [], self._stats(loop)
        finished = False
        try:
            while not finished:
                items = [(await queue.get())[1]]
                while not queue.empty():
                    items.append(queue.get_nowait()[1])
                items = coalesce(items)
                finished = any(is_last(item) for item in items)
                yield self.replica_id, items, self._stats(loop)
        finally:
            if not finished:
                loop.abort([request.request_id])

    def _stats(self, loop: AsyncEngine) -> tuple[int, EngineStats]:
        return time.monotonic_ns(), loop.stats

    async def check_health(self) -> None:
        """Called by Ray Serve: a dead engine thread makes Ray replace this replica."""
        if not self._loop.is_alive:
            raise RuntimeError(f"engine of replica {self.replica_id} is dead: {self._loop.error!r}")

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.shutdown(timeout=2.0)


def is_last(item) -> bool:
    return isinstance(item, BaseException) or item.finished


def coalesce(items: list) -> list:
    """Outputs are cumulative: of several queued ones only the latest matters."""
    outputs = [i for i in items if not isinstance(i, BaseException)]
    return outputs[-1:] + [i for i in items if isinstance(i, BaseException)]


class PrefixAffinityRouter(MultiplexMixin, RequestRouter):
    """Requests whose prompts start with the same tokens go to the same replica (its prefix
    cache holds them; texts to pool excepted), unless that replica is busier than the least busy one by more than
    `imbalanced_threshold` requests; then, and for requests without a prompt, power of two
    choices on queue length (Ray Serve's default).

    Replicas that refused the request already (a full queue; the ingress sends it again) are
    left out while any other runs. With several models (ray/multiplex.py), a request for a
    model goes among the replicas Serve's multiplex routing offers: those that have it loaded
    first, then those with the fewest models loaded (MultiplexMixin).

    The preferred replica is chosen by rendezvous hashing of the first `prefix_tokens`
    prompt tokens (one KV block by default) over the live replicas, so when a replica dies
    or joins only the prefixes it owned move.
    """

    def initialize_state(self, prefix_tokens: int = 16, imbalanced_threshold: int = 4,
                         affinity: bool = True) -> None:
        self.prefix_tokens = prefix_tokens
        self.imbalanced_threshold = imbalanced_threshold
        self.affinity = affinity

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None,
                              ) -> list[list[RunningReplica]]:
        avoid = pending_request.args[1] if pending_request and len(pending_request.args) > 1 else ()
        candidate_replicas = [r for r in candidate_replicas
                              if r.replica_id.unique_id not in avoid] or candidate_replicas
        if pending_request is not None and pending_request.metadata.multiplexed_model_id:
            holding = self.apply_multiplex_routing(pending_request)
            candidate_replicas = [r for r in candidate_replicas
                                  if r.replica_id in holding] or candidate_replicas
        if not candidate_replicas:
            return []
        pair = random.sample(candidate_replicas, min(2, len(candidate_replicas)))
        key = self._prefix_key(pending_request)
        if key is None or not self.affinity:
            return [pair]
        preferred = max(candidate_replicas, key=lambda r: _weight(key, r.replica_id.unique_id))
        busy = {r.replica_id: self.replica_queue_len_cache.get(r.replica_id) or 0
                for r in candidate_replicas}
        if busy[preferred.replica_id] > min(busy.values()) + self.imbalanced_threshold:
            return [pair]
        return [[preferred], pair]

    def _prefix_key(self, pending_request: PendingRequest | None) -> bytes | None:
        """The prompt's first `prefix_tokens` tokens, if it has that many (else no cache hit
        is possible: the prefix cache shares whole blocks only). None for a text to pool:
        it keeps no K/V to hit, and the texts of one request (a query's pairs with each
        document) often share their first block, which would send them all to one replica."""
        if pending_request is None or not pending_request.args:
            return None
        if getattr(pending_request.args[0], "pooling", None) is not None:
            return None
        prompt_ids = getattr(pending_request.args[0], "prompt_token_ids", None)
        if not isinstance(prompt_ids, list) or len(prompt_ids) < self.prefix_tokens:
            return None
        return repr(prompt_ids[:self.prefix_tokens]).encode()


def _weight(key: bytes, replica: str) -> bytes:
    return hashlib.blake2b(key + replica.encode(), digest_size=8).digest()
