"""The `nanovllm` command: serve, generate, download, bench offline, bench serve, bench
serve-vs-offline, bench models, bench prefix-cache-dir, bench engine-ipc."""

from __future__ import annotations

import argparse
import logging
import sys

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # an entry point: before numpy loads (see model/platform/threads.py)

# isort: split
from nanovllm.config import EngineConfig, add_engine_args  # noqa: E402
from nanovllm.hub import DownloadError, HubUnavailableError  # noqa: E402
from nanovllm.scripts import (  # noqa: E402
    bench_engine_ipc,
    bench_lora,
    bench_models,
    bench_prefix_cache_dir,
    benchmark,
    benchmark_embeddings,
    benchmark_serving,
    download_gpt2,
    serve_vs_offline,
)
from nanovllm.server import cli as server_cli  # noqa: E402


def run_offline(args: argparse.Namespace) -> int:
    """`bench offline`: the grid, or with --lora-modules adapters against the base model."""
    return bench_lora.run_lora(args) if args.lora_modules else benchmark.run(args)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="complete prompts offline and print the results")
    p.add_argument("model", help="checkpoint directory, hub name (gpt2, ...) or preset with "
                                 "--load-format dummy or --allow-dummy-fallback")
    p.add_argument("prompts", nargs="+", help="prompt texts")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--sampling-seed", type=int, default=None, help="seed of every request")
    add_engine_args(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    from nanovllm.llm import LLM
    from nanovllm.values.sampling_params import SamplingParams

    config = EngineConfig.from_cli_args(args.model, args)
    llm = LLM(**{f: getattr(config, f) for f in config.__slots__})
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, n=args.n, seed=args.sampling_seed)
    if llm.engine.is_dummy:
        print("note: RANDOM WEIGHTS (dummy checkpoint): the text below is noise", file=sys.stderr)
    for out in llm.generate(args.prompts, params):
        for c in out.outputs:
            print(f"{out.prompt!r} -> {c.text!r}  [{c.finish_reason}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanovllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    server_cli.add_serve_args(serve)
    serve.set_defaults(func=server_cli.run_serve)
    _add_generate(sub)
    download = sub.add_parser("download", help="download GPT-2 from the Hugging Face hub")
    download_gpt2.add_args(download)
    download.set_defaults(func=download_gpt2.run)
    bench = sub.add_parser("bench", help="benchmarks: offline (the engine) or serve (a server)")
    kinds = bench.add_subparsers(dest="bench_command", required=True)
    offline = kinds.add_parser("offline", help="offline prefill/decode tok/s of the engine")
    benchmark.add_args(offline)
    offline.set_defaults(func=run_offline)
    embeddings = kinds.add_parser("embeddings", help="texts/s of embeddings, against "
                                                     "sentence-transformers")
    benchmark_embeddings.add_args(embeddings)
    embeddings.set_defaults(func=benchmark_embeddings.run)
    serving = kinds.add_parser("serve", help="benchmark a running server")
    benchmark_serving.add_args(serving)
    serving.set_defaults(func=benchmark_serving.run)
    versus = kinds.add_parser("serve-vs-offline", help="served decode against the engine's own "
                                                       "(a server it starts), alternating")
    serve_vs_offline.add_args(versus)
    versus.set_defaults(func=serve_vs_offline.run)
    ipc = kinds.add_parser("engine-ipc", help="what a step's outputs cost between the engine "
                                              "process and the server")
    bench_engine_ipc.add_args(ipc)
    ipc.set_defaults(func=bench_engine_ipc.run)
    models = kinds.add_parser("models", help="two models on one server: each one's throughput "
                                             "beside the other against alone, load time, memory")
    bench_models.add_args(models)
    models.set_defaults(func=bench_models.run)
    disk = kinds.add_parser("prefix-cache-dir", help="time to first token of a long prefix "
                                                     "after a restart: from disk, or computed")
    bench_prefix_cache_dir.add_args(disk)
    disk.set_defaults(func=bench_prefix_cache_dir.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, HubUnavailableError, DownloadError) as e:
        # Bad flags, a broken checkpoint, no network: the user's to fix, so one line, no traceback.
        print(f"nanovllm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
