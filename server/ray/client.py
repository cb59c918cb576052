"""N engine replicas on Ray Serve behind the one FastAPI app: `nanovllm serve --data-parallel-size N`.

The HTTP side is the single server's own app (build_app), unchanged: RayEngineClient is an
EngineClient (nanovllm/engine_client.py), as the single server's AsyncEngine is. Each request
becomes one streaming call through a Ray Serve DeploymentHandle; the PrefixAffinityRouter picks
the replica and each replica batches its share continuously.

Failures: a replica whose process dies is restarted by Ray Serve. A request that had not been
accepted by it yet is sent again (the router picks a live replica); one that had started ends
with RequestAborted, i.e. an OpenAI-shaped 503 or a streamed error event saying so. /health
stays 200 while one replica runs, saying how many of how many do, and is 503 when none does.
A replica whose waiting queue is full refuses a request; it goes to another replica with room,
and is answered 429 only when every replica refused it.

Imported only when --data-parallel-size is given: it imports Ray.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import fields
from pathlib import Path

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from nanovllm import EngineConfig
from nanovllm.engine_client import EngineClient, EngineDeadError, OutputSink, RequestAborted
from nanovllm.input_processor import InputProcessor
from nanovllm.model.platform.threads import thread_pool_settings
from nanovllm.pooling_input import PoolingInput
from nanovllm.server.ray.replica import EngineReplica, PrefixAffinityRouter, ReplicaInfo
from nanovllm.stats import EngineStats
from nanovllm.tokenizer import Tokenizer
from nanovllm.values.errors import QueueFullError
from nanovllm.values.request import EngineRequest

logger = logging.getLogger(__name__)

APP_NAME = "nanovllm"
MAX_SUBMIT_ATTEMPTS = 3  # a request not yet accepted by a dying replica is sent again
HEALTH_POLL_S = 1.0
GCS_PROBE_S = 1.0  # a live GCS answers in milliseconds
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def engine_deployment(config: EngineConfig, num_replicas: int, cpus_per_replica: int, *,
                      affinity: bool = True):
    """The engine replicas as a Ray Serve application (not started).

    Each replica reserves `cpus_per_replica` CPUs and sizes its numba/BLAS thread pools to
    them through its runtime_env, i.e. before numpy loads in the replica's process: a Ray
    worker loads numpy before it imports nanovllm, so the pools' spin settings
    (model/platform/threads.py) go the same way, a value set here by the user winning as it does
    there.
    """
    return replica_deployment(EngineReplica, num_replicas, cpus_per_replica,
                              config.max_num_seqs, config.block_size, affinity).bind(config)


def replica_deployment(cls: type, num_replicas: int, cpus_per_replica: int,
                       max_ongoing_requests: int, block_size: int, affinity: bool = True):
    """The Serve deployment "engine" of `cls` (EngineReplica or a subclass), not bound yet."""
    threads = {name: str(cpus_per_replica) for name in THREAD_ENV}
    threads |= {name: os.environ.get(name, value) for name, value in thread_pool_settings().items()}
    return serve.deployment(
        cls, name="engine", num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": cpus_per_replica, "runtime_env": {"env_vars": threads}},
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=5,
        request_router_config=RequestRouterConfig(
            request_router_class=PrefixAffinityRouter,
            request_router_kwargs={"prefix_tokens": block_size, "affinity": affinity}))


def deploy(config: EngineConfig, num_replicas: int, cpus_per_replica: int, *,
           affinity: bool = True, app_name: str = APP_NAME):
    """Start the engine replicas (Ray must be initialized); returns their DeploymentHandle."""
    return run_deployment(engine_deployment(config, num_replicas, cpus_per_replica,
                                            affinity=affinity), app_name)


def run_deployment(app, app_name: str = APP_NAME):
    """Start a bound deployment of engine replicas; returns its DeploymentHandle."""
    serve.start(proxy_location="Disabled")  # the HTTP server is ours (uvicorn + build_app)
    return serve.run(app, name=app_name, route_prefix=None)


def cpus_per_replica(num_replicas: int) -> int:
    """Each replica's share of the cluster's CPUs not reserved yet (at least one)."""
    return max(1, int(ray.available_resources().get("CPU", 1)) // num_replicas)


class RayEngineClient:
    """The EngineClient of engine replicas on Ray Serve (see the module doc)."""

    def __init__(self, handle, info: ReplicaInfo, num_replicas: int, *,
                 app_name: str = APP_NAME, teardown: Callable[[], None] | None = None) -> None:
        self._handle = handle
        self._app_name = app_name
        self._teardown = teardown  # what shutdown() stops besides the requests (Ray, Serve)
        self._tokenizer_dir = tempfile.TemporaryDirectory(prefix="nanovllm-tokenizer-")
        for name, data in info.tokenizer_files.items():
            Path(self._tokenizer_dir.name, name).write_bytes(data)
        self.tokenizer = Tokenizer(self._tokenizer_dir.name, info.eos_token_id)
        self.model_path = info.model_path
        self.is_dummy = info.is_dummy
        self.max_model_len: int = info.max_model_len
        pooling = None if info.pooling is None else PoolingInput(
            self.tokenizer, info.vocab_size, info.max_model_len, info.pooling, info.hidden_size,
            info.is_cross_encoder)
        self.processor = InputProcessor(self.tokenizer, info.vocab_size, info.max_model_len,
                                        info.block_size, info.num_kv_blocks,
                                        info.max_waiting_seqs, pooling, info.scheduling_policy)
        self.replica_stats: dict[str, EngineStats] = {}  # latest snapshot each replica sent
        self._stats_when: dict[str, int] = {}  # its time on the replica's clock
        self.replicas_running, self.replicas_target = 0, num_replicas
        self._tasks: dict[str, tuple[asyncio.Task, OutputSink, Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = threading.Event()
        self._health = threading.Thread(target=self._poll_health, name="nanovllm-ray-health",
                                         daemon=True)
        self._poll_health_once()
        self._health.start()

    # ---- the EngineClient surface --------------------------------------------------------
    @property
    def stats(self) -> EngineStats:
        """All replicas' stats summed (usage: of the pooled blocks); per replica: replica_stats."""
        snapshots = list(self.replica_stats.values())
        total = {f.name: _combined(f.name, [getattr(s, f.name) for s in snapshots])
                 for f in fields(EngineStats)}
        blocks = total["num_total_blocks"]
        total["kv_cache_usage"] = 1.0 - total["num_free_blocks"] / blocks if blocks else 0.0
        return EngineStats(**total)

    @property
    def error(self) -> BaseException | None:
        if self.replicas_running == 0 and not self._closed.is_set():
            return EngineDeadError(f"no engine replica is running (0 of {self.replicas_target})")
        return None

    @property
    def is_alive(self) -> bool:
        return self.replicas_running > 0 and not self._closed.is_set()

    @property
    def degraded(self) -> str | None:
        """Why /health is not fully healthy though requests are served, or None."""
        if 0 < self.replicas_running < self.replicas_target:
            return f"{self.replicas_running} of {self.replicas_target} engine replicas running"
        return None

    def add_lora(self, lora) -> Future[bool]:
        return _refused(ValueError("LoRA adapters are served from one engine: not with "
                                   "--data-parallel-size"))

    def remove_lora(self, lora_id: int) -> Future[bool]:
        return self.add_lora(None)

    def add_request(self, request: EngineRequest, sink: OutputSink) -> Future[None]:
        accepted: Future[None] = Future()
        if self._closed.is_set():
            accepted.set_exception(RequestAborted("The server is shutting down."))
            return accepted
        self._loop = asyncio.get_running_loop()
        task = self._loop.create_task(self._relay(request, sink, accepted))
        self._tasks[request.request_id] = (task, sink, accepted)
        return accepted

    def abort(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            task, _, _ = self._tasks.pop(rid, (None, None, None))
            if task is not None:
                task.cancel()  # cancels the Ray call: the replica aborts the engine request

    def abort_all(self, reason: str) -> None:
        """Abort every in-flight request; their handlers get RequestAborted(reason)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._abort_all, reason)

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.abort_all("The server is shutting down.")
        # The poll wakes at once; only a Ray call stuck on a dead GCS keeps it longer.
        self._health.join(min(timeout, 2 * HEALTH_POLL_S))
        try:
            if self._teardown is not None:
                self._teardown()
        finally:
            self._tokenizer_dir.cleanup()

    # ---- internals -----------------------------------------------------------------------
    def _abort_all(self, reason: str) -> None:
        tasks, self._tasks = self._tasks, {}
        for task, sink, accepted in tasks.values():
            if not _fail(accepted, RequestAborted(reason)):
                sink.put(RequestAborted(reason))  # it was taken: its stream ends with why
            task.cancel()

    async def _relay(self, request: EngineRequest, sink: OutputSink,
                     accepted: Future[None]) -> None:
        """Settle `accepted` with the replicas' answer, then forward the request's outputs
        from its replica into `sink`.

        A replica whose queue is full refuses the request before taking it; it is then sent
        again, the router told to avoid the replicas that refused it, and the client sees
        the 429 only once every replica did. A replica that died before taking it is retried
        as well (MAX_SUBMIT_ATTEMPTS); one that died after is the client's error.
        """
        request_id = request.request_id
        refused: list[str] = []  # replicas whose queue was full for this request
        failures = 0
        try:
            while True:
                call = self._handle.options(stream=True).generate.remote(request, tuple(refused))
                replica = None  # the replica that answered, once it did
                try:
                    async for replica, items, (when, stats) in call:
                        self._keep_stats(replica, when, stats)
                        if not accepted.done():  # the replica's first answer: taken or not
                            if items and isinstance(items[0], BaseException):
                                if not self._try_another(replica, items[0], refused):
                                    _fail(accepted, items[0])
                                    return
                                break
                            accepted.set_result(None)
                        for item in items:
                            sink.put(item)
                    else:
                        return
                except asyncio.CancelledError:
                    call.cancel()
                    raise
                except Exception as exc:  # the replica died (or Ray could not reach it)
                    failures += 1
                    if replica is not None or failures == MAX_SUBMIT_ATTEMPTS:
                        logger.warning("request %s lost its replica: %r", request_id, exc)
                        self.replica_stats.pop(replica, None)  # its counters died with it
                        lost = RequestAborted(  # not EngineDeadError: others serve
                            "The engine replica serving this request failed; new requests go "
                            "to the live replicas.")
                        if not _fail(accepted, lost):
                            sink.put(lost)
                        return
                    logger.info("request %s: replica failed before accepting it; resending",
                                request_id)
        finally:
            _fail(accepted, RequestAborted("The request was withdrawn before an engine took it."))
            entry = self._tasks.get(request_id)
            if entry is not None and entry[1] is sink:
                del self._tasks[request_id]

    def _keep_stats(self, replica: str, when: int, stats: EngineStats) -> None:
        if when > self._stats_when.get(replica, -1):
            self._stats_when[replica], self.replica_stats[replica] = when, stats

    def _try_another(self, replica: str, refusal: BaseException, refused: list[str]) -> bool:
        """Whether `replica` refused the request for a full queue and another replica has not
        yet (the router falls back to a refusing one only when no other runs): if so, it
        joins `refused`."""
        if not isinstance(refusal, QueueFullError):
            return False
        if replica in refused or len(refused) + 1 >= self.replicas_target:
            return False
        refused.append(replica)
        return True

    def _poll_health(self) -> None:
        while not self._closed.wait(HEALTH_POLL_S):
            self._poll_health_once()

    def _poll_health_once(self) -> None:
        """Replica counts as Ray Serve's controller sees them."""
        try:
            app = serve.status().applications.get(self._app_name)
            deployment = app.deployments["engine"] if app else None
        except Exception:  # noqa: BLE001 - the controller is unreachable: report no replica
            deployment = None
        if deployment is None:
            self.replicas_running = 0
            return
        self.replicas_running = deployment.replica_states.get("RUNNING", 0)


def connect(address: str | None) -> bool:
    """Connect to a Ray cluster (`address`, else $RAY_ADDRESS) or start a local one; returns
    whether we started it. A local instance listens on loopback only, without a dashboard."""
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=False)
        return False
    context = ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                       _node_ip_address="127.0.0.1", object_store_memory=128 * 2**20,
                       log_to_driver=False)
    logger.info("Started a local Ray instance (session %s)", context.address_info["session_dir"])
    return True


def start_replicas(args) -> EngineClient:
    """`nanovllm serve --data-parallel-size N`: Ray up, N replicas deployed, a client for them."""
    owns_ray = connect(args.ray_address)
    try:
        per_replica = cpus_per_replica(args.data_parallel_size)
        logger.info("Starting %d engine replicas on Ray, %d CPU(s) and thread(s) each",
                    args.data_parallel_size, per_replica)
        handle = deploy(EngineConfig.from_cli_args(args.model, args), args.data_parallel_size,
                        per_replica)
        info = handle.describe.remote().result()
    except BaseException:
        ray.shutdown()
        raise
    return RayEngineClient(handle, info, args.data_parallel_size,
                           teardown=functools.partial(teardown, owns_ray))


def teardown(owns_ray: bool) -> None:
    """Remove our replicas; stop Ray if we started it, else only disconnect from it.

    When the stop signal reached Ray's own processes too (systemd's default
    KillMode=control-group, `kill -TERM -PGID`), Ray is already going down: Serve's calls
    would wait a minute for the GCS and then exit 1, so they are skipped, and the processes
    ray.init started are killed outright instead of asked to stop a second time.
    """
    try:
        if ray_is_up(owns_ray):
            serve.delete(APP_NAME)
            if owns_ray:
                serve.shutdown()
        else:
            logger.warning("Ray is stopping already (the signal reached its processes too); "
                           "skipping Serve's cleanup")
            if owns_ray:
                ray._private.worker._global_node.kill_all_processes(check_alive=False)
    finally:
        ray.shutdown()


_CONFIG_FIELDS = ("block_size", "kv_cache_dtype", "enable_prefix_caching")


def _combined(name: str, values: list):
    """One EngineStats field over the replicas: counts add up (histograms bucket by bucket);
    the cache's configuration is every replica's own, so the first one's stands, as does any
    field that is not a count (a prefix cache directory's counters, None without one)."""
    if name in _CONFIG_FIELDS or (values and not isinstance(values[0], int | float | tuple)):
        return values[0] if values else EngineStats.__dataclass_fields__[name].default
    if values and isinstance(values[0], tuple):
        return tuple(map(sum, zip(*values, strict=True)))
    return sum(values)


def ray_is_up(owns_ray: bool) -> bool:
    """Whether the GCS answers within GCS_PROBE_S and, for a local instance we started, all
    of its processes still run (a signalled GCS may take seconds to stop answering, while
    the rest of them exit at once). Ray has no public call with a timeout for this."""
    node = ray._private.worker._global_node
    if owns_ray and node is not None and node.dead_processes():
        return False
    try:
        ray._private.worker.global_worker.gcs_client.internal_kv_get(
            b"nanovllm-probe", b"nanovllm", timeout=GCS_PROBE_S)
    except Exception:  # noqa: BLE001 - RpcError, or any failure to reach it: not up
        return False
    return True


def _fail(future: Future, exc: BaseException) -> bool:
    """Fail `future` unless it is already settled; whether it did."""
    if future.done():
        return False
    future.set_exception(exc)
    return True


def _refused(exc: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(exc)
    return future
