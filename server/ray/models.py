"""Several models on Ray Serve: the catalog's models served by one deployment of engine
replicas with Serve's model multiplexing (ray/multiplex.py), behind the server's model pool.

The pool (server/models/pool.py) loads a model through `ray_loader`: it asks a replica to
describe the model (which loads it there) and binds a RayEngineClient to it, whose calls carry
the model's name as their multiplexed model id, so Serve routes them to the replicas that hold
it. Which models the replicas hold is Serve's to decide: each keeps at most
`max_models_per_replica` and evicts the least recently used; a model the pool lists as loaded
(bound, in the ingress) may have been evicted from every replica since, and its next request
loads it again where Serve sends it. The pool's own limits and idle unload do not apply.

Imported only with --data-parallel-size and several models: it imports Ray.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import ray

from nanovllm import EngineConfig
from nanovllm.server.models.catalog import FOREVER, ModelEntry, engine_config
from nanovllm.server.models.context import ModelContext, model_context
from nanovllm.server.models.pool import Loader, ModelPool
from nanovllm.server.ray.client import (
    APP_NAME,
    RayEngineClient,
    connect,
    cpus_per_replica,
    replica_deployment,
    run_deployment,
    teardown,
)
from nanovllm.server.ray.multiplex import MultiplexedReplica


def models_deployment(configs: dict[str, EngineConfig], num_replicas: int,
                      cpus_per_replica: int, max_models_per_replica: int):
    """The replicas of every model in `configs` (by name) as a Serve application, not
    started; each holds at most `max_models_per_replica` at once."""
    first = next(iter(configs.values()))
    most = max(c.max_num_seqs for c in configs.values()) * max_models_per_replica
    return replica_deployment(MultiplexedReplica, num_replicas, cpus_per_replica, most,
                              first.block_size).bind(configs, max_models_per_replica)


def ray_loader(handle, num_replicas: int, *, app_name: str = APP_NAME,
               chat_template: str | None = None, enable_tokenizer_info: bool = False
               ) -> Loader:
    """The pool's Loader of a model on the replicas behind `handle` (see the module doc)."""

    def load(entry: ModelEntry) -> ModelContext:
        bound = handle.options(multiplexed_model_id=entry.name)
        info = bound.describe.remote().result()  # (raises why the model could not load)
        client = RayEngineClient(bound, info, num_replicas, app_name=app_name)
        return model_context(client, entry.name, entry.name, chat_template=chat_template,
                             enable_tokenizer_info=enable_tokenizer_info)

    return load


def max_models_per_replica(args: argparse.Namespace, entries: list[ModelEntry]) -> int:
    """--max-loaded-models counts per replica here (default: all of them)."""
    return args.max_loaded_models or len(entries)


def start_models(args: argparse.Namespace, entries: list[ModelEntry],
                 chat_template: str | None) -> tuple[ModelPool, Callable[[], None]]:
    """`nanovllm serve --data-parallel-size N` with several models: Ray up, N replicas of the
    whole catalog deployed, a pool over them; and what stops Ray once the pool is shut down."""
    owns_ray = connect(args.ray_address)
    try:
        per_replica = cpus_per_replica(args.data_parallel_size)
        configs = {e.name: engine_config(e, args) for e in entries}
        handle = run_deployment(models_deployment(configs, args.data_parallel_size, per_replica,
                                                  max_models_per_replica(args, entries)))
    except BaseException:
        ray.shutdown()
        raise
    loader = ray_loader(handle, args.data_parallel_size, chat_template=chat_template,
                        enable_tokenizer_info=args.enable_tokenizer_info_endpoint)
    return ModelPool(entries, loader, keep_alive=FOREVER), functools.partial(teardown, owns_ray)
