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
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

import uvicorn

from nanovllm.server.defaults import (
    API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    api_key_from_env,
)
from nanovllm.server.models.catalog import served_name  # (the name a checkpoint is served as)
from nanovllm.values.limits import FLAG_HELP, ServerLimits

logger = logging.getLogger("nanovllm.serve")
OPEN_FILES_RESERVED = 64  # checkpoint, numba cache, log, listening socket, ...


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    from nanovllm.config import add_engine_args

    parser.add_argument("model", nargs="?", default=None,
                        help="checkpoint directory, .gguf file or hub name (e.g. gpt2, "
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
                        help="the name clients use for MODEL (default: the checkpoint "
                             "directory's name, or MODEL as given for a hub name; never a local "
                             "path)")
    parser.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                        help="LoRA adapters served from the start (with --enable-lora), each "
                             "name=path or vLLM's JSON {\"name\": ..., \"path\": ..., "
                             "\"base_model_name\": ...}; clients select one by its name in "
                             "\"model\"")
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
                        help="serve N engine replicas on Ray Serve behind this one endpoint; "
                             "with several models each replica serves any of them (Ray Serve's "
                             "model multiplexing) (needs `pip install nanovllm[ray]`; default: "
                             "one engine, no Ray)")
    parser.add_argument("--ray-address", default=None,
                        help="with --data-parallel-size: the Ray cluster to use (e.g. auto; "
                             "default: $RAY_ADDRESS, else a local Ray instance)")
    add_model_args(parser)
    add_tool_args(parser)
    add_limit_args(parser)
    add_engine_args(parser)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Several models from one endpoint (server/models/): where they come from, how many stay
    loaded and for how long."""
    g = parser.add_argument_group("several models")
    g.add_argument("--model", dest="models", action="append", default=[], metavar="MODEL",
                   help="one more model to serve (repeatable), named as MODEL is")
    g.add_argument("--models-dir", default=None, metavar="DIR",
                   help="serve every checkpoint directory and .gguf file in DIR, each named by "
                        "its folder or file name")
    g.add_argument("--models-config", default=None, metavar="FILE",
                   help="a YAML file of models: name, path and engine options of each "
                        "(docs/operations.md)")
    g.add_argument("--keep-alive", default=None, metavar="DURATION",
                   help="how long a model stays loaded once idle: seconds or 5m, 30s, 1h; 0 "
                        "unloads it after each request, -1 never (default: 5m with several "
                        "models, never with one)")
    g.add_argument("--max-loaded-models", type=int, default=None, metavar="N",
                   help="at most N models loaded at once; loading another unloads the least "
                        "recently used idle one (default: no limit; with --data-parallel-size: "
                        "per replica, default all)")
    g.add_argument("--max-loaded-memory", type=int, default=None, metavar="BYTES",
                   help="at most this many bytes of checkpoints (on disk) loaded at once, "
                        "evicting as --max-loaded-models does (default: no limit)")


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
    # The web app's modules load on a thread of their own while the engine loads its model.
    imports = ThreadPoolExecutor(1, "nanovllm-import")
    app_module = imports.submit(importlib.import_module, "nanovllm.server.app")
    imports.shutdown(wait=False)  # (the import runs on)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    check_serve_args(args)
    chat_template = None
    if args.chat_template:
        from nanovllm.server.chat.template import load_chat_template
        chat_template = load_chat_template(args.chat_template)
    in_reasoning = structured_in_reasoning(args)
    api_key = args.api_key or api_key_from_env()
    limits = limits_from_args(args)
    concurrency = raise_open_file_limit(OPEN_FILES_RESERVED, limits.limit_concurrency)
    if concurrency < limits.limit_concurrency:
        logger.warning("--limit-concurrency %d lowered to %d to stay under the open-file limit",
                       limits.limit_concurrency, concurrency)
    with bind_api_socket(args.host, args.port) as listening:
        served, stop_ray = serving_engines(args, chat_template)
        engine = served["models"]
        app = app_module.result().build_app(**served, api_key=api_key, limits=limits,
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
                server.run(sockets=[listening])
        finally:
            engine.shutdown()
            if stop_ray is not None:
                stop_ray()
        logger.info("Server stopped.")
    return 0 if server.started else 1


def bind_api_socket(host: str, port: int) -> socket.socket:
    """The API's socket, bound before any engine starts (as vLLM does): a busy port is refused at
    once instead of after the model loads, and the ports Ray's processes take as they start up
    cannot include it. Listening starts with uvicorn; until then a client's connect is refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot bind ({exc.strerror or exc})") from exc
    return sock


def check_serve_args(args: argparse.Namespace) -> None:
    """The serve options that only make sense together, refused before anything loads."""
    if args.enable_auto_tool_choice and args.tool_call_parser is None:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
    if args.lora_modules and not args.enable_lora:
        raise ValueError("--lora-modules needs --enable-lora")
    if args.enable_lora and args.data_parallel_size is not None:
        raise ValueError("--enable-lora serves adapters from one engine: not with "
                         "--data-parallel-size")
    if args.ray_address and args.data_parallel_size is None:
        raise ValueError("--ray-address needs --data-parallel-size")
    if args.enable_step_mode and args.data_parallel_size is not None:
        raise ValueError("--enable-step-mode steps one engine: not with --data-parallel-size")


def serving_engines(args: argparse.Namespace, chat_template: str | None):
    """What serves the requests, as `build_app`'s arguments (`models` is the engine client or
    the pool, stopped with `shutdown`), and what stops Ray after it (or None): the model pool
    on this machine, or with --data-parallel-size replicas on Ray (several models: Ray Serve's
    multiplexing; one: N replicas of it)."""
    if args.data_parallel_size is None:
        engine, adapters = model_pool(args, chat_template)
        return dict(models=engine, adapters=adapters), None
    if args.models or args.models_dir or args.models_config:
        engine, stop_ray = start_ray_models(args, chat_template)
        return dict(models=engine), stop_ray
    name = args.served_model_name or served_name(args.model)  # the web page's views: not on Ray
    return dict(models=start_ray_replicas(args), served_model_name=name, model_root=name), None


def model_pool(args: argparse.Namespace, chat_template: str | None):
    """The served models (server/models/): one engine process per loaded model (an engine
    thread in this process with --engine-in-process), and with --enable-lora the LoRA adapters
    on the one base model. A server of one model loads it now, and keeps it unless --keep-alive
    says otherwise; with several, each loads on its first request."""
    from nanovllm.server.lora import served_adapters
    from nanovllm.server.models.catalog import (
        FOREVER,
        engine_config,
        entries_from_args,
        parse_duration,
    )
    from nanovllm.server.models.pool import DEFAULT_KEEP_ALIVE, ModelPool

    entries = entries_from_args(args)
    for entry in entries:  # a mistaken option fails the start, not the model's first request
        engine_config(entry, args)
    if args.max_loaded_models is not None and args.max_loaded_models < 1:
        raise ValueError("--max-loaded-models must be a positive integer")
    if len(entries) > 1 and args.enable_step_mode:
        raise ValueError("--enable-step-mode steps one engine: not with several models")
    single = len(entries) == 1
    adapters = None
    if args.enable_lora:
        if not single:
            raise ValueError("--enable-lora serves adapters on one base model: not with several "
                             "models")
        adapters = served_adapters(args.lora_modules, entries[0].name)
    keep_alive = parse_duration(args.keep_alive) if args.keep_alive is not None else \
        FOREVER if single else DEFAULT_KEEP_ALIVE
    pool = ModelPool(entries, lambda entry: load_model(entry, args, chat_template, adapters),
                     keep_alive=keep_alive, max_loaded=args.max_loaded_models,
                     max_memory=args.max_loaded_memory)
    if single:
        pool.load_now(entries[0].name)
    logger.info("Serving %d model%s: %s", len(entries), "" if single else "s",
                ", ".join(e.name for e in entries))
    return pool, adapters


def load_model(entry, args: argparse.Namespace, chat_template: str | None, adapters=None):
    """Start one model's engine (blocking), with the LoRA `adapters` on it; its ModelContext."""
    from nanovllm.async_engine import AsyncEngine
    from nanovllm.engine_core.client import ProcessEngineClient
    from nanovllm.inspection import Inspector
    from nanovllm.server.models.catalog import engine_config
    from nanovllm.server.models.context import model_context

    config = engine_config(entry, args)
    if args.engine_in_process:
        engine = AsyncEngine.from_config(config)
        inspector = Inspector(engine, enable_step_mode=args.enable_step_mode)
    else:
        client = ProcessEngineClient(config, enable_step_mode=args.enable_step_mode)
        engine, inspector = client, client.inspector  # (the process client's own views)
    if adapters is not None:
        try:
            adapters.install(engine)
        except BaseException:
            engine.shutdown()
            raise
    return model_context(engine, entry.name, entry.name, chat_template=chat_template,
                         enable_tokenizer_info=args.enable_tokenizer_info_endpoint,
                         inspector=inspector)


def freeze_startup_heap() -> int:
    """Moves every object alive now (the model's, the tokenizer's, the libraries': they live as
    long as the server) out of the collector's reach, as vLLM does. A full collection while
    serving then walks only what serving allocated, rather than holding the GIL (and with it
    the engine thread) while it walks the whole start-up heap. Returns how many it froze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def check_ray(args: argparse.Namespace) -> None:
    if args.data_parallel_size < 1:
        raise ValueError(f"--data-parallel-size must be at least 1, got {args.data_parallel_size}")
    if importlib.util.find_spec("ray") is None:
        raise ValueError("--data-parallel-size needs Ray: pip install 'nanovllm[ray]'")


def start_ray_replicas(args: argparse.Namespace):
    check_ray(args)
    from nanovllm.server.ray.client import start_replicas

    return start_replicas(args)


def start_ray_models(args: argparse.Namespace, chat_template: str | None):
    """Several models on N engine replicas (server/ray/models.py): the pool, and what stops
    Ray after it. Serve keeps --max-loaded-models per replica and evicts by its own LRU, so
    the pool's keep-alive and memory budget cannot be honoured there: refused."""
    from nanovllm.server.models.catalog import engine_config, entries_from_args

    check_ray(args)
    for flag, value in (("--keep-alive", args.keep_alive),
                        ("--max-loaded-memory", args.max_loaded_memory)):
        if value is not None:
            raise ValueError(f"{flag} is not served with --data-parallel-size (Ray Serve "
                             "keeps --max-loaded-models per replica, least recently used out)")
    if args.max_loaded_models is not None and args.max_loaded_models < 1:
        raise ValueError("--max-loaded-models must be a positive integer")
    entries = entries_from_args(args)
    for entry in entries:  # a mistaken option fails the start, not the model's first request
        engine_config(entry, args)
    from nanovllm.server.ray.models import start_models

    logger.info("Serving %d models on %d engine replicas: %s", len(entries),
                args.data_parallel_size, ", ".join(e.name for e in entries))
    return start_models(args, entries, chat_template)


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
