"""Which of the project's files run while the server answers one streamed completion.

Starts `nanovllm serve --engine-in-process` on a 2-layer random-weight GPT-2 (or `--model`) in a
child process with
a profile hook on every thread, sends one streamed completion to warm it up, then switches the
hook on (SIGUSR1), streams one more completion, and switches it off (SIGUSR2): the child writes
the file of every Python function called in between. Compiled kernels run below Python and are
not seen; a module whose code only declares values (dataclasses' generated methods have no
file) is not counted, since nothing in it runs.

    python -m nanovllm.scripts.lab.trace_request              # the list, by folder
    python -m nanovllm.scripts.lab.trace_request --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the repository (through the nanovllm symlinks)

# Run in the child: a hook on every thread that records the files of calls while switched on.
CHILD = r"""
import os, signal, sys, threading
files, on = set(), [False]
def hook(frame, event, arg):
    if on[0] and event == "call":
        files.add(frame.f_code.co_filename)
def start(*_):
    files.clear(); on[0] = True
    open(os.environ["TRACE_OUT"] + ".on", "w").close()  # tells the parent the hook is on
def stop(*_):
    on[0] = False
    with open(os.environ["TRACE_OUT"], "w") as f:
        f.write("\n".join(sorted(files)))
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
threading.setprofile(hook)
sys.setprofile(hook)
from nanovllm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_one(url: str, max_tokens: int) -> None:
    body = {"prompt": "The quick brown fox", "max_tokens": max_tokens, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        response.raise_for_status()
        for _ in response.iter_lines():
            pass


def project_files(paths: list[str]) -> list[str]:
    """The project's own files among `paths`, relative to the repository, real paths."""
    found = set()
    for path in paths:
        if not Path(path).is_file():  # "<frozen os>", "<string>": not files
            continue
        real = Path(path).resolve()
        if real.is_relative_to(ROOT) and ".venv" not in real.parts:
            found.add(real.relative_to(ROOT).as_posix())
    return sorted(found)


def trace(model: str, max_tokens: int) -> list[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "files.txt")
        env = {**os.environ, "TRACE_OUT": str(out)}
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, "serve", model, "--port", str(port),
             "--num-kv-blocks", "64", "--disable-ui", "--log-level", "warning",
             "--engine-in-process"],  # one process holds the whole path, so one hook sees it
            env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.5)
            stream_one(url, max_tokens)  # warm-up: first calls compile and import
            child.send_signal(signal.SIGUSR1)
            # A loaded machine can hold the signal's handler back past a fixed wait.
            on = Path(f"{out}.on")
            while not on.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            stream_one(url, max_tokens)
            time.sleep(0.5)
            child.send_signal(signal.SIGUSR2)
            for _ in range(100):
                if out.exists():
                    break
                time.sleep(0.1)
            return project_files(out.read_text().splitlines())
        finally:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()


def by_folder(files: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(f.split("/")[0], []).append(f)
    return groups


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a checkpoint directory (default: a 2-layer "
                                                 "random-weight GPT-2 written for the run)")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the list here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from nanovllm.model import write_dummy_checkpoint

            model = str(write_dummy_checkpoint(Path(tmp, "tiny"), "gpt2", n_layer=2, n_embd=64,
                                               n_head=4, vocab_size=1024, n_positions=256))
        files = trace(model, args.max_tokens)
    groups = by_folder(files)
    print(f"{len(files)} project files run for one streamed completion:")
    for folder, names in groups.items():
        print(f"  {folder}/ ({len(names)}): {', '.join(n.partition('/')[2] for n in names)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"files": files}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
