"""The `nanovllm` command: serve, generate, download, bench (and bench serve)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Collection

from nanovllm.model.threads import configure_thread_pools

configure_thread_pools()  # an entry point: before numpy loads (see model/threads.py)

# isort: split
from nanovllm.config import EngineConfig, add_engine_args  # noqa: E402
from nanovllm.hub import DownloadError, HubUnavailableError  # noqa: E402


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
    from nanovllm import LLM, SamplingParams

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


def _add_delegated(sub, name: str, module: str, help: str):
    p = sub.add_parser(name, help=help)
    mod = __import__(module, fromlist=["add_args"])
    (getattr(mod, "add_serve_args", None) or mod.add_args)(p)
    p.set_defaults(func=getattr(mod, "run_serve", None) or mod.run)
    return p


class _Commands(argparse._SubParsersAction):
    """The subcommands; a nested one (`bench serve`) must come right after its parent.

    Options before it would be parsed as the parent's: `bench --input-len 8 serve` took 8 as the
    offline bench's input length, then serve's default overwrote it, silently; `bench --port 1
    serve` failed with a puzzling "invalid choice: '1'". Both are refused, in one line.

    Private argparse API, knowingly: there is no public hook between choosing a subcommand and
    parsing its arguments (the check must run inside parse_args), nor a public list of a
    parser's options (`--json serve` names a file; options added through argument groups
    bypass any add_argument override). tests/test_cli.py pins the behaviour.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nested: dict[str, Collection[str]] = {}  # command -> the names of its subcommands

    def __call__(self, parser, namespace, values, option_string=None):
        command, rest = values[0], values[1:]
        at = self._nested_at(command, rest)
        if at > 0:
            before, nested = " ".join(rest[:at]), rest[at]
            parser.exit(2, f"{parser.prog} {command}: error: `{before}` must come after "
                           f"`{nested}` (see: {parser.prog} {command} {nested} --help)\n")
        super().__call__(parser, namespace, values, option_string)

    def _nested_at(self, command: str, rest: list[str]) -> int:
        """Where a nested subcommand appears in `rest`, or 0; `--json serve` names a file."""
        nested = self.nested.get(command, ())
        takes_value = {option for action in self.choices[command]._actions if action.nargs != 0
                       for option in action.option_strings}
        return next((i for i, arg in enumerate(rest)
                     if arg in nested and not (i and rest[i - 1] in takes_value)), 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanovllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, action=_Commands)
    _add_delegated(sub, "serve", "nanovllm.server.cli", "serve a model over an OpenAI-compatible HTTP API")
    _add_generate(sub)
    _add_delegated(sub, "download", "nanovllm.scripts.download_gpt2", "download GPT-2 from the Hugging Face hub")
    bench = _add_delegated(sub, "bench", "nanovllm.scripts.benchmark", "offline prefill/decode benchmark")
    bench_sub = bench.add_subparsers(dest="bench_command")
    _add_delegated(bench_sub, "serve", "nanovllm.scripts.benchmark_serving", "benchmark a running server")
    sub.nested["bench"] = bench_sub.choices
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
