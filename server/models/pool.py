"""ModelPool: the one owner of which models are loaded. A request names a model; the pool
loads it if it must (requests for a model that is loading wait on the same load), holds it while
the request's response is being sent, and unloads it once it was idle for its keep-alive, when
room is needed for another (least recently used first, never one with requests in flight), or
when asked (POST /v1/models/unload).

Loading runs `loader` (an engine process per model: unloading stops that process, which returns
its memory to the operating system) on a worker thread, so the other models serve meanwhile.

A request's hold on its model (a lease) lasts until its response was sent, a stream's too:
`request_scope()` (run around each HTTP request by the app) collects the leases the request
took and releases them at its end, with the request's keep_alive if it gave one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nanovllm.server.errors import APIError
from nanovllm.server.models.catalog import FOREVER, ModelEntry, checkpoint_size
from nanovllm.server.models.context import ModelContext
from nanovllm.values.errors import quote

logger = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE = 300.0  # seconds an idle model stays loaded (Ollama's 5m)
Loader = Callable[[ModelEntry], ModelContext]  # blocking: starts the model's engine
# The leases the current HTTP request took: (pool, model name, its keep_alive or None).
_LEASES: contextvars.ContextVar[list | None] = contextvars.ContextVar("nanovllm_model_leases",
                                                                      default=None)


@dataclass(slots=True)
class _Slot:
    """One model's place in the pool."""

    entry: ModelEntry
    size: int  # on-disk bytes, the memory budget's estimate of it
    model: ModelContext | None = None  # set while loaded
    loading: asyncio.Future | None = None  # the load under way, shared by its waiters
    admitted: bool = False  # its load found room (until then it waits, taking none)
    unloading: asyncio.Future | None = None  # its engine stopping
    leases: int = 0  # requests holding it (or waiting for its load)
    last_used: float = 0.0  # monotonic: least recently used is evicted first
    expires_at: float | None = None  # wall clock of its idle unload; None: not scheduled
    timer: asyncio.TimerHandle | None = None
    unload_when_idle: bool = False  # asked to unload while busy
    pinned: bool = False  # given loaded by the caller, who owns its engine: never unloaded

    @property
    def state(self) -> str:
        if self.loading is not None:
            return "loading"
        return "loaded" if self.model is not None else "unloaded"


@dataclass(slots=True)
class ModelStatus:
    """What /v1/models, /api/tags and /api/ps say of one model."""

    name: str
    state: str  # "loaded", "loading" or "unloaded"
    size: int  # bytes on disk
    path: str
    model: ModelContext | None  # while loaded
    expires_at: float | None  # wall clock of its idle unload (None: not while idle, or never)
    in_flight: int


class ModelPool:
    def __init__(self, entries: list[ModelEntry], loader: Loader | None, *,
                 keep_alive: float = DEFAULT_KEEP_ALIVE, max_loaded: int | None = None,
                 max_memory: int | None = None) -> None:
        """`max_loaded` models at most, whose on-disk sizes add up to at most `max_memory`
        bytes (None: no such limit); `keep_alive` seconds idle before one is unloaded."""
        if not entries:
            raise ValueError("a model pool needs at least one model")
        self._slots = {e.name: _Slot(e, e.size) for e in entries}
        self._loader = loader
        self.keep_alive = keep_alive
        self.max_loaded, self.max_memory = max_loaded, max_memory
        self.default_name = entries[0].name  # a request that names no model gets this one
        self._changes: list[asyncio.Future] = []  # loads waiting for room

    @classmethod
    def of(cls, model: ModelContext) -> ModelPool:
        """A pool of one model already loaded by the caller, who owns (and stops) its engine."""
        pool = cls([ModelEntry(model.name, model.root)], None, keep_alive=FOREVER)
        slot = pool._slots[model.name]
        slot.model, slot.pinned = model, True
        return pool

    # ---- what is there ----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._slots)

    def statuses(self) -> list[ModelStatus]:
        return [ModelStatus(name, s.state, s.size, s.entry.path, s.model, s.expires_at,
                            s.leases) for name, s in self._slots.items()]

    def loaded(self) -> list[ModelContext]:
        return [s.model for s in self._slots.values() if s.model is not None]

    def slot(self, name: str | None) -> _Slot:
        """The named model's slot (the default one for None); a 404 naming it if unknown."""
        name = self.default_name if name is None else name
        slot = self._slots.get(name)
        if slot is None:
            served = ", ".join(quote(n, 100) for n in list(self._slots)[:20])
            raise APIError(f"The model {quote(name, 100)} does not exist: this server serves "
                           f"{served} (GET /v1/models).", 404, "model")
        return slot

    # ---- requests ---------------------------------------------------------------------------
    @staticmethod
    @contextmanager
    def request_scope() -> Iterator[list]:
        """Around one HTTP request: the leases it takes are released when it ends."""
        leases: list = []
        token = _LEASES.set(leases)
        try:
            yield leases
        finally:
            _LEASES.reset(token)
            for pool, name, keep_alive in leases:
                pool.release(name, keep_alive)

    async def acquire(self, name: str | None, keep_alive: float | None = None) -> ModelContext:
        """The named model, loaded (waiting for its load if it must); the current request
        holds it until its end (see request_scope). A 404 for an unknown name; a 503 naming
        the model if it fails to load."""
        slot = self.slot(name)
        leases = _LEASES.get()
        slot.leases += 1
        self._touch(slot)
        try:
            model = await self._loaded(slot)
        except BaseException:
            slot.leases -= 1
            self._idle_check(slot, None)
            raise
        if leases is None:  # outside a request (a script, a test): no hold to keep
            self.release(slot.entry.name, keep_alive)
        else:
            leases.append((self, slot.entry.name, keep_alive))
        return model

    def release(self, name: str, keep_alive: float | None = None) -> None:
        slot = self._slots[name]
        slot.leases -= 1
        slot.last_used = time.monotonic()
        self._idle_check(slot, keep_alive)
        self._notify()

    async def load(self, name: str | None) -> ModelContext:
        """Load the model (if it is not) without holding it: POST /v1/models/load."""
        slot = self.slot(name)
        self._touch(slot)
        model = await self._loaded(slot)
        self._idle_check(slot, None)
        return model

    async def unload(self, name: str | None) -> str:
        """Unload the model now, or once its requests end if it has some; its state after."""
        slot = self.slot(name)
        if slot.pinned:
            raise APIError(f"The model {quote(slot.entry.name, 100)} was loaded with the server "
                           "and cannot be unloaded.", 400, "model")
        if slot.leases:
            slot.unload_when_idle = True
            return slot.state
        if slot.loading is not None:
            with contextlib.suppress(Exception):  # (a load that failed left nothing to unload)
                await asyncio.shield(slot.loading)
            if slot.leases:
                slot.unload_when_idle = True
                return slot.state
        await self._unload(slot)
        return slot.state

    def load_now(self, name: str) -> ModelContext:
        """Load a model before serving (blocking; raises why it failed)."""
        slot = self.slot(name)
        slot.model = self._loader(slot.entry)
        slot.size = slot.size or checkpoint_size(slot.model.engine.model_path)
        slot.last_used = time.monotonic()
        return slot.model

    # ---- stopping ---------------------------------------------------------------------------
    def abort_all(self, reason: str) -> None:
        for model in self.loaded():
            model.engine.abort_all(reason)

    def shutdown(self) -> None:
        """Stop every engine the pool started (pinned ones are their owner's)."""
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.model is not None and not slot.pinned:
                slot.model.engine.shutdown()
                slot.model = None

    # ---- loading and unloading --------------------------------------------------------------
    def _touch(self, slot: _Slot) -> None:
        slot.last_used = time.monotonic()
        slot.expires_at = None
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    async def _loaded(self, slot: _Slot) -> ModelContext:
        if slot.model is not None and slot.unloading is None:
            return slot.model
        if slot.loading is None:
            slot.loading = asyncio.ensure_future(self._load(slot))
        try:  # (a waiter that leaves does not cancel the load the others wait on)
            return await asyncio.shield(slot.loading)
        except APIError:
            raise
        except Exception as exc:
            raise APIError(f"The model {quote(slot.entry.name, 100)} could not be loaded: "
                           f"{exc}", 503, "model") from exc

    async def _load(self, slot: _Slot) -> ModelContext:
        name = slot.entry.name
        try:
            if slot.unloading is not None:
                await slot.unloading
            await self._make_room(slot)
            slot.admitted = True
            logger.info("loading model %s from %s", name, slot.entry.path)
            started = time.monotonic()
            slot.model = await asyncio.to_thread(self._loader, slot.entry)
            if not slot.size:  # a hub name: its size is known once it was fetched
                slot.size = checkpoint_size(slot.model.engine.model_path)
            logger.info("model %s loaded in %.1f s", name, time.monotonic() - started)
            return slot.model
        except Exception:
            logger.exception("model %s failed to load", name)
            raise
        finally:
            slot.loading, slot.admitted = None, False
            self._notify()

    def _occupied(self, but: _Slot) -> list[_Slot]:
        """The models that hold memory, `but` aside: loaded, loading, or still stopping. (A load
        still waiting for room holds none: two such loads must not wait for each other.)"""
        return [s for s in self._slots.values() if s is not but and (
            s.model is not None or s.admitted or s.unloading is not None)]

    def _over(self, slot: _Slot) -> bool:
        others = self._occupied(slot)
        if self.max_loaded is not None and len(others) + 1 > self.max_loaded:
            return True
        return self.max_memory is not None and bool(others) and \
            sum(s.size for s in others) + slot.size > self.max_memory

    async def _make_room(self, slot: _Slot) -> None:
        """Unload the least recently used idle models until `slot` fits; wait for requests to
        end while every model is busy."""
        while self._over(slot):
            idle = [s for s in self._occupied(slot)
                    if s.model is not None and s.unloading is None and not s.leases
                    and not s.pinned]
            if idle:
                victim = min(idle, key=lambda s: s.last_used)
                logger.info("unloading model %s (least recently used) for %s",
                            victim.entry.name, slot.entry.name)
                await self._unload(victim)
                continue
            change = asyncio.get_running_loop().create_future()
            self._changes.append(change)
            await change

    def _notify(self) -> None:
        changes, self._changes = self._changes, []
        for change in changes:
            if not change.done():
                change.set_result(None)

    def _idle_check(self, slot: _Slot, keep_alive: float | None) -> None:
        """Once a model has no request left: unload it now (keep_alive 0, or asked to), or
        schedule its unload after its keep-alive."""
        if slot.leases or slot.model is None or slot.pinned or slot.loading is not None:
            return
        seconds = self.keep_alive if keep_alive is None else keep_alive
        if slot.unload_when_idle or seconds <= 0:
            asyncio.ensure_future(self._unload(slot))
        elif not math.isinf(seconds):
            if slot.timer is not None:
                slot.timer.cancel()
            slot.expires_at = time.time() + seconds
            slot.timer = asyncio.get_running_loop().call_later(
                seconds, lambda: asyncio.ensure_future(self._expire(slot)))

    async def _expire(self, slot: _Slot) -> None:
        slot.timer = None
        if not slot.leases and slot.model is not None:
            logger.info("unloading model %s (idle for its keep-alive)", slot.entry.name)
            await self._unload(slot)

    async def _unload(self, slot: _Slot) -> None:
        model = slot.model
        if model is None or slot.leases or slot.unloading is not None:
            return
        if slot.timer is not None:
            slot.timer.cancel()
        slot.model, slot.timer, slot.expires_at, slot.unload_when_idle = None, None, None, False
        slot.unloading = asyncio.ensure_future(asyncio.to_thread(model.engine.shutdown))
        try:
            await slot.unloading
        finally:
            slot.unloading = None
            self._notify()
        logger.info("model %s unloaded", slot.entry.name)
