"""Every command in the README's code blocks, and the runnable ones of docs/, run as a user
pastes them: in a copy of the repository's files (a fresh clone), in the venv `make setup`
builds, offline (the hub unreachable, so random weights where a model is downloaded), with the
packages the README says to install; the docs' commands after `source .venv/bin/activate`, as
docs/operations.md says. A command these tests do not know fails them: a new command is either
run here or listed with the reason it is not (SKIPPED, DOC_RULES).

The one change to what is pasted: servers listen on a free port instead of 8000 (the machine
may run other servers), and the commands are pointed at that port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)
# Commands of the README's blocks this test does not run, with why.
SKIPPED = {"make test": "the whole suite: CI itself runs it"}
# Python blocks (by their first line) this test does not run, with why.
SKIPPED_PYTHON = {
    "from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, "
    "set_tracing_disabled": "needs an instruct checkpoint with a tool-calling template "
                            "(./Qwen2.5-0.5B-Instruct) and openai-agents; "
                            "tests/server/test_agents.py runs the Agents SDK on a "
                            "random-weight Hermes-template Llama",
}
# The first start compiles every kernel and writes a 0.5 GB checkpoint: a bound on a hang.
READY_TIMEOUT = 1200
READY = "Serving the OpenAI-compatible API at"


def blocks(text: str) -> list[tuple[str, str]]:
    return BLOCK.findall(text)


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blanks dropped."""
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    return commands


def pip_installs(text: str) -> list[str]:
    """The `.venv/bin/pip install ...` commands the README's prose asks for."""
    return [re.sub(r"\s+", " ", c) for c in re.findall(r"`(\.venv/bin/pip\s+install\s+[^`]+)`", text)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked files as they are in the working tree: what a clone holds."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src, dst = ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.exists():
            shutil.copy2(src, dst)
    return dest


class Process:
    """A command started in the background, its output collected into `log`."""

    def __init__(self, command: str, cwd: Path, env: dict) -> None:
        self.log_path = cwd / f".test-{time.monotonic_ns()}.log"
        self.log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None, f"exited early:\n{self.log[-5000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{self.log[-5000:]}"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout, to copy what a clone holds")
    return fresh_copy(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def offline_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.endswith("_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(sys.prefix))  # no venv of ours on PATH
    return env


def on_port(command: str, port: int) -> str:
    return command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def venv(checkout, offline_env) -> Path:
    """`make setup` in the fresh copy: the venv every command runs in."""
    started = time.monotonic()
    subprocess.run(["make", "setup"], cwd=checkout, env=offline_env, check=True)
    print(f"make setup: {time.monotonic() - started:.0f} s")
    return checkout / ".venv"


@pytest.mark.slow
def test_every_command_of_the_readme_runs_as_written(checkout, offline_env, venv):
    text = README.read_text()
    found = blocks(text)
    assert [kind for kind, _ in found].count("bash") >= 3 and len(found) >= 5
    port = free_port()
    ran: list[str] = []

    # `make serve` first: it builds the venv the other commands use. The chat template lets the
    # Responses and Messages snippets run against the same server.
    make_serve = [c for kind, b in found if kind == "bash" for c in shell_commands(b)
                  if c.split("#")[0].strip() == "make serve"]
    assert make_serve, "the README no longer says `make serve`"
    server = Process(f'make serve ARGS="--port {port} --chat-template '
                     f'examples/chat_template_gpt2.jinja"', checkout, offline_env)
    started = time.monotonic()
    try:
        server.wait_for(READY)
        print(f"make serve, from a fresh clone to serving: {time.monotonic() - started:.0f} s")
        assert "RANDOM weights" in server.log
        ran.append("make serve")
        for install in pip_installs(text):
            out = subprocess.run(["bash", "-c", install], cwd=checkout, env=offline_env,
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
            ran.append(install)
        assert any("openai" in c for c in ran) and any("anthropic" in c for c in ran)

        python_blocks = []
        for kind, block in found:
            if kind == "python":
                if block.splitlines()[0] not in SKIPPED_PYTHON:
                    python_blocks.append(block)
                continue
            for command in shell_commands(block):
                bare = command.split(" #")[0].strip()
                if bare in SKIPPED or bare == "make serve":
                    continue
                if bare.startswith("curl "):
                    out = subprocess.run(["bash", "-c", on_port(bare, port)], cwd=checkout,
                                         env=offline_env, capture_output=True, text=True,
                                         timeout=600)
                    assert out.returncode == 0 and '"choices"' in out.stdout, out
                    assert '"error"' not in out.stdout, out.stdout
                elif bare.startswith(".venv/bin/nanovllm serve "):
                    run_server_command(bare, checkout, offline_env)
                else:
                    raise AssertionError(f"the README's command {bare!r} is not run by this "
                                         "test: run it here, or add it to SKIPPED with why")
                ran.append(bare)

        # The Python blocks, each run by the venv's python as the README says; a block that
        # goes on from the one before it (uses its `client`) runs with it.
        python = checkout / ".venv" / "bin" / "python"
        for i, block in enumerate(python_blocks):
            source = block
            if "client" in block and "OpenAI(" not in block:
                source = python_blocks[i - 1] + block
            out = subprocess.run([str(python), "-c", on_port(source, port)], cwd=checkout,
                                 env=offline_env, capture_output=True, text=True, timeout=900)
            assert out.returncode == 0, f"{block}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            ran.append(block.splitlines()[0])
    finally:
        server.stop()
    assert "Server stopped." in server.log  # Ctrl-C: a clean shutdown (make reports the signal)
    print("ran:", *ran, sep="\n  ")


RUN, CURL, SERVE = "run", "curl", "serve"
# (doc, command prefix, how to run it or why it is not run), first match wins; every command of
# a bash block of docs/*.md must match one.
DOC_RULES = [
    ("api.md", "nanovllm serve Qwen/", "a real Qwen3 from the hub; tests/server/test_agent_clis.py "
                                      "serves a random Qwen3 with the same flags"),
    ("api.md", "nanovllm serve DIR --enable-lora", "DIR and the adapters stand for the reader's "
                                                   "own; tests/lora/test_lora_server.py serves "
                                                   "PEFT adapters with the same flags and calls"),
    ("api.md", "curl localhost:8000/v1/", "against the LoRA example's server (see above)"),
    ("api.md", "nanovllm serve ", SERVE),
    ("api.md", "export ", "the coding agents' settings; tests/server/test_agent_clis.py sets them"),
    ("api.md", "claude ", "Claude Code from npm: tests/server/test_agent_clis.py runs it"),
    ("api.md", "codex ", "Codex from npm: tests/server/test_agent_clis.py runs it"),
    ("api.md", "opencode ", "opencode from npm: tests/server/test_agent_clis.py runs it"),
    ("operations.md", "docker ", "needs Docker and an image"),
    ("operations.md", "nanovllm download ", "downloads from the hub"),
    ("operations.md", "nanovllm generate ", RUN),
    ("operations.md", "nanovllm serve --models-", "the reader's own folder and config file of "
                                                 "models; tests/server/test_server_models.py "
                                                 "serves both"),
    ("operations.md", "nanovllm serve ", "a production start (the hub's gpt2, a system cache "
                                         "directory); tests/server/test_server_prefix_cache_dir.py "
                                         "serves with the same flags"),
    ("operations.md", "nanovllm bench ", "a benchmark: minutes of load (tests/scripts run "
                                        "its options on tiny models)"),
    ("performance.md", "", "the runs behind the figures: benchmarks of minutes each, some of "
                           "other projects' tools"),
    ("scale-out.md", "", "Ray clusters and their benchmarks (tests/ray serves replicas)"),
    ("tour.md", "curl ", CURL),
    ("tour.md", "nanovllm serve ", SERVE),
    ("tour.md", "nanovllm bench ", "a benchmark: minutes of load"),
]
# The first line of each Python block of docs/*.md: run, or why not.
DOC_PYTHON = {
    "from nanovllm import LLM, SamplingParams": RUN,
    "from nanovllm.model import write_dummy_checkpoint": "path/to/gpt2-tokenizer stands for "
                                                         "the reader's own directory",
    "from nanovllm import LLM, LoRARequest, SamplingParams": "DIR and adapters/sql stand for the "
                                                             "reader's own; tests/lora makes the "
                                                             "same calls on PEFT adapters",
    "from nanovllm import LLM, PoolingParams": "its last line writes a 0.6B-parameter checkpoint "
                                               "(minutes); tests/embed makes the same calls on "
                                               "small models",
}
ACTIVATE = "source .venv/bin/activate && "


def doc_rule(doc: str, command: str) -> str:
    for name, prefix, action in DOC_RULES:
        if name == doc and command.startswith(prefix):
            return action
    raise AssertionError(f"docs/{doc}: {command!r} is not run by this test: run it here, or "
                         "add it to DOC_RULES with why")


def test_every_doc_command_has_a_rule():
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for kind, block in blocks(doc.read_text()):
            if kind == "bash":
                for command in shell_commands(block):
                    doc_rule(doc.name, command)
            else:
                assert block.splitlines()[0] in DOC_PYTHON, (doc.name, block)


@pytest.mark.slow
def test_the_runnable_commands_of_the_docs_run_as_written(checkout, offline_env, venv):
    port = free_port()
    server = Process(f"{ACTIVATE}nanovllm serve gpt2 --allow-dummy-fallback --port {port}",
                     checkout, offline_env)
    ran = []
    try:
        server.wait_for(READY)
        for doc in sorted((ROOT / "docs").glob("*.md")):
            for kind, block in blocks(doc.read_text()):
                if kind == "python":
                    if DOC_PYTHON[block.splitlines()[0]] == RUN:
                        out = subprocess.run([str(venv / "bin" / "python"), "-c", block],
                                             cwd=checkout, env=offline_env, capture_output=True,
                                             text=True, timeout=900)
                        assert out.returncode == 0, f"{block}\n{out.stderr[-3000:]}"
                        ran.append(block.splitlines()[0])
                    continue
                for command in shell_commands(block):
                    action = doc_rule(doc.name, command)
                    if action == SERVE:
                        run_server_command(ACTIVATE + command.split(" #")[0], checkout,
                                           offline_env)
                    elif action in (RUN, CURL):
                        out = subprocess.run(["bash", "-c", ACTIVATE + on_port(command, port)],
                                             cwd=checkout, env=offline_env, capture_output=True,
                                             text=True, timeout=900)
                        assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}" \
                                                    f"\n{out.stderr[-3000:]}"
                        if action == CURL:
                            assert '"choices"' in out.stdout and '"error"' not in out.stdout
                    else:
                        continue
                    ran.append(f"{doc.name}: {command}")
    finally:
        server.stop()
    assert len(ran) >= 6, ran
    print("ran:", *ran, sep="\n  ")


def run_server_command(command: str, cwd: Path, env: dict) -> None:
    """A `nanovllm serve` command of the README, on a free port: it must start and answer."""
    import httpx

    port = free_port()
    server = Process(f"{command} --port {port}", cwd, env)
    try:
        server.wait_for(READY)
        body = {"model": "gpt2", "prompt": "def add(a, b):\n    return a + b\n", "max_tokens": 8}
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=600)
        assert answer.status_code == 200, answer.text
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log[-3000:]


def test_the_readme_commands_are_found():
    """The parsing the slow test relies on, on the README as it is."""
    text = README.read_text()
    commands = [c for kind, b in blocks(text) if kind == "bash" for c in shell_commands(b)]
    assert "make serve    # serve GPT-2 on http://127.0.0.1:8000/v1" in commands
    assert any(c.startswith("curl -N http://127.0.0.1:8000/v1/completions") and c.endswith("}'")
               for c in commands)
    assert all(c.startswith((".venv/bin/", "make ", "curl ")) for c in commands), commands
    assert pip_installs(text) == [".venv/bin/pip install openai",
                                  ".venv/bin/pip install anthropic"]
    firsts = [b.splitlines()[0] for kind, b in blocks(text) if kind == "python"]
    assert set(SKIPPED_PYTHON) <= set(firsts)  # no reason kept for a block that is gone
