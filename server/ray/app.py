"""nanovllm as a whole Ray Serve application: the OpenAI app itself runs as a Serve ingress
deployment, behind Ray's HTTP proxy, in front of the engine replicas.

`nanovllm serve --data-parallel-size N` does not need this (it serves the app with its own
uvicorn); this is for clusters managed by Ray alone, e.g. KubeRay's RayService, or

    serve run nanovllm.server.ray.app:build model=gpt2 data-parallel-size=4

Arguments are `nanovllm serve`'s flags without the dashes (`load-format=dummy`,
`num-kv-blocks=1024`, `api-key=...`, `disable-ui=true`); flags that take no value are given as
`flag=true`. The request limits (`max-request-body-bytes=...`, ...) apply as in `nanovllm
serve`, except the two that are uvicorn's (limit-concurrency, timeout-keep-alive): Ray's HTTP
proxy serves the connections here, and its own settings (http_options) govern them.
"""

from __future__ import annotations

import argparse

from ray import serve

from nanovllm import EngineConfig
from nanovllm.server.app import build_app
from nanovllm.server.defaults import api_key_from_env
from nanovllm.server.ray.client import RayEngineClient, cpus_per_replica, engine_deployment
from nanovllm.values.limits import ServerLimits


@serve.deployment(name="openai", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class OpenAIIngress:
    """The single server's FastAPI app over a RayEngineClient of the engine replicas."""

    def __init__(self, engines, num_replicas: int, served_model_name: str,
                 api_key: str | None, limits: ServerLimits, ui: bool) -> None:
        self._engines = engines
        self._num_replicas = num_replicas
        self._served_model_name = served_model_name
        self._api_key = api_key
        self._limits = limits
        self._ui = ui

    async def __serve_build_asgi_app__(self):
        info = await self._engines.describe.remote()
        app_name = serve.get_replica_context().app_name
        self.client = RayEngineClient(self._engines, info, self._num_replicas, app_name=app_name)
        name = self._served_model_name
        return build_app(self.client, served_model_name=name, model_root=name,
                         api_key=self._api_key, limits=self._limits, ui=self._ui)

    def __del__(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.shutdown()


def serve_args(cli_args: dict[str, str]) -> argparse.Namespace:
    """`serve run` arguments parsed by `nanovllm serve`'s own parser (one set of flags)."""
    from nanovllm.server.cli import add_serve_args

    argv = [str(cli_args.get("model", ""))]
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
    engines = engine_deployment(EngineConfig.from_cli_args(args.model, args), replicas,
                                cpus_per_replica(replicas))
    return OpenAIIngress.bind(engines, replicas, args.served_model_name or served_name(args.model),
                              args.api_key or api_key_from_env(), limits_from_args(args),
                              not args.disable_ui)
