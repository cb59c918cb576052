"""`nanovllm serve MODEL`: load the engine, start its thread, serve the API with uvicorn.

MODEL is a local checkpoint directory or a hub name (gpt2, distilgpt2, ...). With
--load-format dummy, or with --allow-dummy-fallback when the hub cannot be reached (decided where
the engine loads its model, nanovllm/model_loading.py), it serves a preset with random weights and
says so. Ctrl-C / SIGTERM: in-flight requests are aborted (clients get an error), the listening
socket is closed, the engine thread stops.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import threading

import uvicorn

logger = logging.getLogger("nanovllm.serve")


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    from nanovllm.config import add_engine_args

    parser.add_argument("model", help="checkpoint directory or hub name (e.g. gpt2)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    parser.add_argument("--api-key", default=None,
                        help="require `Authorization: Bearer KEY` on /v1/* "
                             "(default: $NANOVLLM_API_KEY or $VLLM_API_KEY)")
    parser.add_argument("--served-model-name", default=None,
                        help="model name clients use (default: MODEL as given)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--data-parallel-size", type=int, default=None, metavar="N",
                        help="serve N engine replicas on Ray Serve behind this one endpoint "
                             "(needs `pip install nanovllm[ray]`; default: one engine, no Ray)")
    parser.add_argument("--ray-address", default=None,
                        help="with --data-parallel-size: the Ray cluster to use (e.g. auto; "
                             "default: $RAY_ADDRESS, else a local Ray instance)")
    add_engine_args(parser)


class Server(uvicorn.Server):
    """uvicorn.Server that aborts in-flight requests as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, engine_loop) -> None:
        super().__init__(config)
        self._engine_loop = engine_loop

    def handle_exit(self, sig, frame) -> None:
        self._engine_loop.abort_all("The server is shutting down.")
        super().handle_exit(sig, frame)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                logger.info("Serving the OpenAI-compatible API at http://%s:%d/v1 "
                            "(e.g. POST http://%s:%d/v1/completions)", host, port, host, port)


def run_serve(args: argparse.Namespace) -> int:
    from nanovllm import EngineConfig, LLMEngine
    from nanovllm.server.app import build_app
    from nanovllm.server.engine_loop import EngineLoop

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    api_key = args.api_key or os.environ.get("NANOVLLM_API_KEY") or os.environ.get("VLLM_API_KEY")
    if args.ray_address and args.data_parallel_size is None:
        raise ValueError("--ray-address needs --data-parallel-size")
    if args.data_parallel_size is not None:  # N replicas on Ray; the HTTP side is the same
        loop = start_ray_replicas(args)
        model_root = loop.model_path
    else:
        engine = LLMEngine(EngineConfig.from_cli_args(args.model, args))
        loop, model_root = EngineLoop(engine).start(), str(engine.model_path)
    app = build_app(loop, served_model_name=args.served_model_name or args.model,
                    model_root=model_root, api_key=api_key)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5, access_log=False)
    server = Server(config, loop)
    try:
        with absorb_reraised_signals():
            server.run()
    finally:
        loop.shutdown()
    logger.info("Server stopped.")
    return 0 if server.started else 1


def start_ray_replicas(args: argparse.Namespace):
    if args.data_parallel_size < 1:
        raise ValueError(f"--data-parallel-size must be at least 1, got {args.data_parallel_size}")
    if importlib.util.find_spec("ray") is None:
        raise ValueError("--data-parallel-size needs Ray: pip install 'nanovllm[ray]'")
    from nanovllm.server.ray_client import start_replicas

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


def main(argv: list[str] | None = None) -> int:
    """`python -m nanovllm.server ...` is `nanovllm serve ...`, one-line errors included."""
    from nanovllm.cli import main as nanovllm_main

    return nanovllm_main(["serve", *(sys.argv[1:] if argv is None else argv)])
