"""Download a GPT-2 checkpoint from the Hugging Face Hub for nanovllm to serve.

    python scripts/download_gpt2.py gpt2                  # -> models/gpt2
    nanovllm download gpt2-medium --output /data/gpt2-medium --revision main
    nanovllm download openai-community/gpt2               # any GPT-2-architecture repo id

Fetches only what serving needs (config, safetensors weights, tokenizer files) with
huggingface_hub's `snapshot_download` (and its progress bars), keeps what an interrupted run
finished (rerun the same command), and checks that the result is GPT-2 and loads before it
appears under its final name. On success the checkpoint path is printed on stdout; progress and
errors go to stderr.

Without network (or with HF_HUB_OFFLINE=1) it prints one line saying so and how to run on random
weights instead (`nanovllm serve gpt2 --load-format dummy`), and exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nanovllm.hub import (
    HUB_REPOS,
    DownloadError,
    HubUnavailableError,
    download_dir,
    download_model,
    staging_dir,
)


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", nargs="?", default="gpt2",
                        help=f"one of {', '.join(HUB_REPOS)} or a hub repo id (org/name) "
                             "of a GPT-2-architecture model (default: gpt2)")
    parser.add_argument("-o", "--output", default=None, metavar="DIR",
                        help="where to put the checkpoint (default: models/<model>)")
    parser.add_argument("--revision", default=None,
                        help="branch, tag or commit of the hub repo (default: main)")
    parser.add_argument("--force", action="store_true",
                        help="download again even if DIR already holds this model, "
                             "and replace a DIR that nanovllm did not create")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the weights after the download (saves time and "
                             "memory for the large models; the GPT-2 config check still runs)")
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Downloads; returns the exit status (0 ok, 1 offline or unusable model, 130 interrupted)."""
    _quiet_hub_logs()
    try:
        path = download_model(args.model, args.output, args.revision, force=args.force,
                              verify=not args.no_verify, log=_log)
    except (HubUnavailableError, DownloadError, ValueError, OSError) as e:
        _log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        where = staging_dir(download_dir(args.model, args.output))
        _log(f"interrupted; the files so far are kept in {where}: rerun the command to resume")
        return 130
    print(path)
    return 0


def _quiet_hub_logs() -> None:
    """Our own one-line messages replace huggingface_hub's multi-line warnings, and its HTTP
    library's line per request (nanovllm's CLI logs at INFO)."""
    from huggingface_hub.utils import httpx
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger(httpx.__name__).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="download_gpt2", description=__doc__.split("\n")[0])
    return run(add_args(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
