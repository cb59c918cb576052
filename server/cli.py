"""`nanovllm serve MODEL`: load the engine, start its thread, serve the API with uvicorn.

MODEL is a local checkpoint directory or a hub name (gpt2, distilgpt2, ...). With
--load-format dummy, or with --allow-dummy-fallback when the hub cannot be reached (decided where
the engine loads its model, nanovllm/model_loading.py), it serves a preset with random weights and
says so. Ctrl-C / SIGTERM: in-flight requests are aborted (clients get an error), the listening
socket is closed, the engine thread stops.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import uvicorn

from nanovllm.server.defaults import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    api_key_from_env,
)
from nanovllm.values.limits import FLAG_HELP, ServerLimits

logger = logging.getLogger("nanovllm.serve")
OPEN_FILES_RESERVED = 64  # checkpoint, numba cache, log, listening socket, ...


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    from nanovllm.config import add_engine_args

    parser.add_argument("model", help="checkpoint directory, .gguf file or hub name (e.g. gpt2, "
                                      "org/repo:Q4_K_M for a GGUF file)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"interface to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to bind (default {DEFAULT_PORT})")
    parser.add_argument("--api-key", default=None,
                        help="require `Authorization: Bearer KEY` on /v1/* and /ui/api/* "
                             f"(default: ${' or $'.join(API_KEY_ENV)})")
    parser.add_argument("--disable-ui", action="store_true",
                        help="do not serve the web page at /ui (404)")
    parser.add_argument("--enable-step-mode", action="store_true",
                        help="let the web page (and /ui/api/step/*) pause the engine and step it "
                             "one step at a time; a pause ends by itself unless renewed")
    parser.add_argument("--engine-in-process", action="store_true",
                        help="run the engine on a thread of the server's process rather than in "
                             "an engine process of its own (which is restarted if it dies)")
    parser.add_argument("--served-model-name", default=None,
                        help="model name clients use (default: the checkpoint directory's name, "
                             "or MODEL as given for a hub name; never a local path)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--disable-log-requests", action="store_true",
                        help="no access-log line per request (client, method, path, status, "
                             "duration, request id); the log is on by default")
    parser.add_argument("--disable-uvicorn-access-log", action="store_true",
                        help="the same as --disable-log-requests (vLLM's name for uvicorn's "
                             "access log, which this log replaces)")
    parser.add_argument("--chat-template", default=None,
                        help="Jinja chat template (a file, or the template itself) for "
                             "/v1/chat/completions (default: the checkpoint's own, if any)")
    parser.add_argument("--enable-tokenizer-info-endpoint", action="store_true",
                        help="serve GET /tokenizer_info (the tokenizer's configuration)")
    parser.add_argument("--enable-server-load-tracking", action="store_true",
                        help="count generation requests in flight, served at GET /load")
    parser.add_argument("--return-tokens-as-token-ids", action="store_true",
                        help='name every logprobs token "token_id:N" (as the request field '
                             "return_tokens_as_token_ids does)")
    parser.add_argument("--data-parallel-size", type=int, default=None, metavar="N",
                        help="serve N engine replicas on Ray Serve behind this one endpoint "
                             "(needs `pip install nanovllm[ray]`; default: one engine, no Ray)")
    parser.add_argument("--ray-address", default=None,
                        help="with --data-parallel-size: the Ray cluster to use (e.g. auto; "
                             "default: $RAY_ADDRESS, else a local Ray instance)")
    add_tool_args(parser)
    add_limit_args(parser)
    add_engine_args(parser)


def add_tool_args(parser: argparse.ArgumentParser) -> None:
    """vLLM's flags for tool calling and reasoning output."""
    from nanovllm.server.chat.reasoning import REASONING_PARSERS
    from nanovllm.server.chat.tool_calls import PARSERS

    g = parser.add_argument_group("tool calling and reasoning")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='serve tool_choice "auto" (the default with tools): the model\'s own '
                        "calls, read by --tool-call-parser")
    g.add_argument("--tool-call-parser", choices=sorted(PARSERS), default=None,
                   help="how the model writes tool calls (docs/api.md lists the families)")
    g.add_argument("--reasoning-parser", choices=sorted(REASONING_PARSERS), default=None,
                   help="split <think>...</think> into message.reasoning_content")
    g.add_argument("--structured-outputs-config", default=None, metavar="JSON",
                   help='e.g. \'{"enable_in_reasoning": true}\': grammars hold the reasoning '
                        "too (by default they hold the answer after it)")


def structured_in_reasoning(args: argparse.Namespace) -> bool:
    """--structured-outputs-config: vLLM's JSON; only enable_in_reasoning (and the backend
    "guidance", this server's one) can be honoured."""
    if args.structured_outputs_config is None:
        return False
    config = json.loads(args.structured_outputs_config)
    if not isinstance(config, dict):
        raise ValueError("--structured-outputs-config must be a JSON object")
    unknown = sorted(set(config) - {"enable_in_reasoning", "backend"})
    if unknown:
        raise ValueError(f"--structured-outputs-config: {unknown[0]!r} is not supported "
                         "(only enable_in_reasoning)")
    if config.get("backend", "guidance") not in ("auto", "guidance"):
        raise ValueError("--structured-outputs-config: this server's grammar backend is "
                         "llguidance (\"guidance\")")
    return bool(config.get("enable_in_reasoning", False))


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerLimits field (--max-request-body-bytes, ...), defaults from it."""
    g = parser.add_argument_group("request limits")
    for f in fields(ServerLimits):
        g.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default,
                       help=f"{FLAG_HELP[f.name]} (default {f.default})")


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    limits = ServerLimits(**{f.name: getattr(args, f.name) for f in fields(ServerLimits)})
    for f in fields(ServerLimits):
        if getattr(limits, f.name) < 1:
            raise ValueError(f"--{f.name.replace('_', '-')} must be a positive integer")
    return limits


def served_name(model: str) -> str:
    """What clients call the model: a hub name as given (gpt2, org/name), a local checkpoint by
    its directory's name, so that no response or metric shows the server's file system."""
    path = Path(model)
    return path.resolve().name if path.exists() else model


def raise_open_file_limit(reserve: int, wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (as vLLM does): every connection is a
    file. Returns how many connections fit, `reserve` files kept for the process itself."""
    try:
        import resource
    except ImportError:  # not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - reserve))


class Server(uvicorn.Server):
    """uvicorn.Server that aborts in-flight requests as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, engine, ui: bool = False) -> None:
        super().__init__(config)
        self._engine = engine
        self._ui = ui

    def handle_exit(self, sig, frame) -> None:
        self._engine.abort_all("The server is shutting down.")
        super().handle_exit(sig, frame)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                logger.info("Serving the OpenAI-compatible API at http://%s:%d/v1 "
                            "(e.g. POST http://%s:%d/v1/completions)", host, port, host, port)
                if self._ui:
                    logger.info("Web page at http://%s:%d/ui", host, port)


def run_serve(args: argparse.Namespace) -> int:
    from nanovllm.config import EngineConfig
    from nanovllm.engine_core.client import ProcessEngineClient

    # The web app's modules load on a thread of their own while the engine loads its model.
    imports = ThreadPoolExecutor(1, "nanovllm-import")
    app_module = imports.submit(importlib.import_module, "nanovllm.server.app")
    imports.shutdown(wait=False)  # (the import runs on)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    chat_template = None
    if args.chat_template:
        from nanovllm.server.chat.template import load_chat_template
        chat_template = load_chat_template(args.chat_template)
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
    in_reasoning = structured_in_reasoning(args)
    api_key = args.api_key or api_key_from_env()
    limits = limits_from_args(args)
    if args.ray_address and args.data_parallel_size is None:
        raise ValueError("--ray-address needs --data-parallel-size")
    concurrency = raise_open_file_limit(OPEN_FILES_RESERVED, limits.limit_concurrency)
    if concurrency < limits.limit_concurrency:
        logger.warning("--limit-concurrency %d lowered to %d to stay under the open-file limit",
                       limits.limit_concurrency, concurrency)
    if args.enable_step_mode and args.data_parallel_size is not None:
        raise ValueError("--enable-step-mode steps one engine: not with --data-parallel-size")
    inspector = None  # the web page's views of one engine: not across replicas
    if args.data_parallel_size is not None:  # N replicas on Ray; the HTTP side is the same
        engine = start_ray_replicas(args)
    elif args.engine_in_process:
        from nanovllm.async_engine import AsyncEngine
        from nanovllm.inspection import Inspector
        engine = AsyncEngine.from_config(EngineConfig.from_cli_args(args.model, args))
        inspector = Inspector(engine, enable_step_mode=args.enable_step_mode)
    else:
        client = ProcessEngineClient(EngineConfig.from_cli_args(args.model, args),
                                     enable_step_mode=args.enable_step_mode)
        engine, inspector = client, client.inspector
    name = args.served_model_name or served_name(args.model)
    app = app_module.result().build_app(engine, inspector=inspector, served_model_name=name, model_root=name,
                    api_key=api_key, limits=limits,
                    ui=not args.disable_ui, chat_template=chat_template,
                    enable_tokenizer_info=args.enable_tokenizer_info_endpoint,
                    return_tokens_as_token_ids=args.return_tokens_as_token_ids,
                    enable_server_load_tracking=args.enable_server_load_tracking,
                    tool_call_parser=args.tool_call_parser if args.enable_auto_tool_choice
                    else None, reasoning_parser=args.reasoning_parser,
                    structured_in_reasoning=in_reasoning,
                    log_requests=not (args.disable_log_requests
                                      or args.disable_uvicorn_access_log))
    # uvicorn's own access log stays off: the app's (server/middleware.py) has the duration and
    # the request id, and logs each request once.
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5, access_log=False,
                            limit_concurrency=concurrency,
                            timeout_keep_alive=limits.timeout_keep_alive)
    server = Server(config, engine, ui=not args.disable_ui)
    logger.info("%d start-up objects frozen out of the garbage collector's way", freeze_startup_heap())
    try:
        with absorb_reraised_signals():
            server.run()
    finally:
        engine.shutdown()
    logger.info("Server stopped.")
    return 0 if server.started else 1


def freeze_startup_heap() -> int:
    """Moves every object alive now (the model's, the tokenizer's, the libraries': they live as
    long as the server) out of the collector's reach, as vLLM does. A full collection while
    serving then walks only what serving allocated, rather than holding the GIL (and with it
    the engine thread) while it walks the whole start-up heap. Returns how many it froze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def start_ray_replicas(args: argparse.Namespace):
    if args.data_parallel_size < 1:
        raise ValueError(f"--data-parallel-size must be at least 1, got {args.data_parallel_size}")
    if importlib.util.find_spec("ray") is None:
        raise ValueError("--data-parallel-size needs Ray: pip install 'nanovllm[ray]'")
    from nanovllm.server.ray.client import start_replicas

    return start_replicas(args)


class absorb_reraised_signals:
    """uvicorn re-raises the SIGINT/SIGTERM it handled once it has shut down; absorb it so
    that we still stop the engine thread and exit 0 instead of dying on the default action."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self._saved = {}
        if threading.current_thread() is threading.main_thread():
            self._saved = {sig: signal.signal(sig, lambda *_: None) for sig in self.SIGNALS}

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
