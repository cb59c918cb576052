"""Engine replicas that serve several models, with Ray Serve's model multiplexing.

Every replica can serve any model of the catalog ({name: EngineConfig}). The model of a call
is its multiplexed model id (the ingress calls through `handle.options(multiplexed_model_id=
name)`, ray/models.py), read here with `serve.get_multiplexed_model_id()`. A replica loads a
model on its first call for it, on a worker thread (its other models keep streaming), and
keeps at most `max_models` loaded: Serve unloads the least recently used one to load another.
Serve's router knows which replica holds which model, and PrefixAffinityRouter ranks those
first, so a model's calls go where it is loaded.

Imported only with --data-parallel-size and several models: it imports Ray.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve

from nanovllm import EngineConfig
from nanovllm.async_engine import AsyncEngine
from nanovllm.engine_client import RequestAborted
from nanovllm.server.ray.replica import EngineReplica

# An evicted model stops once its requests end (at most this long; then they are aborted):
# Serve evicts the least recently used model whether or not it is busy.
EVICT_WAIT_S = 300.0
EVICT_POLL_S = 0.1


class LoadedEngine:
    """One model's engine on a replica. Serve calls `__del__` when it evicts the model (and
    replaces it with a no-op), so the engine's memory is freed then, not whenever the
    collector gets to it. (A plain class: Serve sets `__del__` on the instance.)"""

    def __init__(self, loop: AsyncEngine) -> None:
        self.loop = loop
        self.stopped = False

    def __del__(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        deadline = time.monotonic() + EVICT_WAIT_S
        while self.loop.is_alive and _busy(self.loop) and time.monotonic() < deadline:
            time.sleep(EVICT_POLL_S)
        self.loop.shutdown(timeout=2.0)


def _busy(loop: AsyncEngine) -> bool:
    stats = loop.stats
    return stats.num_running + stats.num_waiting > 0


class MultiplexedReplica(EngineReplica):
    """The Ray Serve deployment class of several models (wrapped in ray/models.py)."""

    def __init__(self, configs: dict[str, EngineConfig], max_models: int) -> None:
        self._configs = configs
        self._engines: dict[str, LoadedEngine] = {}  # each model's latest load (for health)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

        async def load(model_id: str) -> LoadedEngine:
            return await self._load(model_id)

        # Wrapped here rather than decorated: the limit is the deployment's argument.
        self._loaded = serve.multiplexed(max_num_models_per_replica=max_models)(load)

    async def _load(self, name: str) -> LoadedEngine:
        config = self._configs.get(name)
        if config is None:
            raise KeyError(f"no model {name!r} here (serving {', '.join(self._configs)})")
        loaded = LoadedEngine(await asyncio.to_thread(AsyncEngine.from_config, config))
        self._engines[name] = loaded
        return loaded

    async def engine_of_call(self) -> AsyncEngine:
        """The engine of the call's model, loaded (and another evicted) if it must be."""
        name = serve.get_multiplexed_model_id()
        try:
            return (await self._loaded(name)).loop
        except Exception as exc:  # noqa: BLE001 - any failure to load is this call's error
            raise RequestAborted(f"The model {name!r} could not be loaded on engine replica "
                                 f"{self.replica_id}: {exc}") from exc

    def loaded_engines(self) -> list[AsyncEngine]:
        return [e.loop for e in self._engines.values() if not e.stopped]

    async def check_health(self) -> None:
        """Called by Ray Serve: a dead engine makes Ray replace this replica."""
        for loop in self.loaded_engines():
            if not loop.is_alive:
                raise RuntimeError(f"an engine of replica {self.replica_id} is dead: "
                                   f"{loop.error!r}")

    def __del__(self) -> None:
        for loop in self.loaded_engines():
            loop.shutdown(timeout=2.0)
