"""nanovllm as a whole Ray Serve application: the OpenAI app itself runs as a Serve ingress
deployment, behind Ray's HTTP proxy, in front of the engine replicas.

`nanovllm serve --data-parallel-size N` does not need this (it serves the app with its own
uvicorn); this is for clusters managed by Ray alone, e.g. KubeRay's RayService, or

    serve run nanovllm.server.ray.app:build model=gpt2 data-parallel-size=4

Arguments are `nanovllm serve`'s flags without the dashes (`load-format=dummy`,
`num-kv-blocks=1024`, `api-key=...`, `disable-ui=true`); flags that take no value are given as
`flag=true`. Several models come from `models-dir=DIR` or `models-config=FILE` (with or
without `model=`): every replica serves any of them with Serve's model multiplexing
(ray/models.py), at most `max-loaded-models` at once (default: all). The request limits (`max-request-body-bytes=...`, ...) apply as in `nanovllm
serve`, except the two that are uvicorn's (limit-concurrency, timeout-keep-alive): Ray's HTTP
proxy serves the connections here, and its own settings (http_options) govern them.
"""

from __future__ import annotations

import argparse

from ray import serve

from nanovllm import EngineConfig
from nanovllm.server.app import build_app
from nanovllm.server.defaults import api_key_from_env
from nanovllm.server.models.catalog import FOREVER, ModelEntry, engine_config, entries_from_args
from nanovllm.server.models.pool import ModelPool
from nanovllm.server.ray.client import RayEngineClient, cpus_per_replica, engine_deployment
from nanovllm.server.ray.models import max_models_per_replica, models_deployment, ray_loader
from nanovllm.values.limits import ServerLimits


@serve.deployment(name="openai", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class OpenAIIngress:
    """The single server's FastAPI app over a RayEngineClient of the engine replicas, or
    over a pool of several models (`models`) on multiplexed replicas."""

    def __init__(self, engines, num_replicas: int, served_model_name: str | None,
                 api_key: str | None, limits: ServerLimits, ui: bool,
                 models: list[ModelEntry] | None = None) -> None:
        self._engines = engines
        self._num_replicas = num_replicas
        self._served_model_name = served_model_name
        self._api_key = api_key
        self._limits = limits
        self._ui = ui
        self._models = models

    async def __serve_build_asgi_app__(self):
        app_name = serve.get_replica_context().app_name
        options = dict(api_key=self._api_key, limits=self._limits, ui=self._ui)
        if self._models is not None:
            self.pool = ModelPool(self._models, ray_loader(self._engines, self._num_replicas,
                                                           app_name=app_name),
                                  keep_alive=FOREVER)
            return build_app(self.pool, **options)
        info = await self._engines.describe.remote()
        self.client = RayEngineClient(self._engines, info, self._num_replicas, app_name=app_name)
        name = self._served_model_name
        return build_app(self.client, served_model_name=name, model_root=name, **options)

    def __del__(self) -> None:
        for owner in (getattr(self, "client", None), getattr(self, "pool", None)):
            if owner is not None:
                owner.shutdown()


def serve_args(cli_args: dict[str, str]) -> argparse.Namespace:
    """`serve run` arguments parsed by `nanovllm serve`'s own parser (one set of flags)."""
    from nanovllm.server.cli import add_serve_args

    argv = [str(cli_args["model"])] if "model" in cli_args else []
    for key, value in cli_args.items():
        if key == "model":
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if str(value).lower() == "true" else [flag, str(value)]
    parser = argparse.ArgumentParser(prog="nanovllm.server.ray.app:build")
    add_serve_args(parser)
    return parser.parse_args(argv)


def build(cli_args: dict[str, str]):
    """The Serve application builder: engine replicas plus the OpenAI ingress, with `nanovllm
    serve`'s rules for the served name, the API key and the limits."""
    from nanovllm.server.cli import limits_from_args, served_name

    args = serve_args(cli_args)
    if args.enable_auto_tool_choice or args.reasoning_parser or args.structured_outputs_config:
        raise ValueError("tool calling and reasoning flags are served by `nanovllm serve "
                         "--data-parallel-size N`, not yet by this Ray Serve ingress")
    replicas = args.data_parallel_size or 1
    common = (args.api_key or api_key_from_env(), limits_from_args(args), not args.disable_ui)
    if args.models or args.models_dir or args.models_config:
        entries = entries_from_args(args)
        engines = models_deployment({e.name: engine_config(e, args) for e in entries}, replicas,
                                    cpus_per_replica(replicas),
                                    max_models_per_replica(args, entries))
        return OpenAIIngress.bind(engines, replicas, None, *common, models=entries)
    engines = engine_deployment(EngineConfig.from_cli_args(args.model, args), replicas,
                                cpus_per_replica(replicas))
    return OpenAIIngress.bind(engines, replicas, args.served_model_name or served_name(args.model),
                              *common)
