"""Claude Code, Codex and opencode, installed from npm and run unchanged against the real
server, each the way docs/api.md ("Coding agents") tells a user to: `claude -p`, `codex exec`
and `opencode run`, in a home of their own with no login, telemetry or update check (the
network is never needed). A turn completes with exit code 0, and the next turn of the same
conversation reads its prompt from the prefix cache and reports it where the client reads it.
And a turn goes through the client's own tools: the model calls one, the client runs it and
sends its result back, and the model answers from it (write_tool_calling_qwen3).

The CLIs are installed once into the test cache (a session fixture; the tests skip, saying
why, where npm is missing or the registry is unreachable). npm 11 skips the packages' install
scripts, which only put each CLI's native binary in place: the fixture runs them itself, under
any npm. The server runs a random Qwen3 whose answers end after a few tokens
(write_terse_qwen3): these clients ask for 32,000 tokens, or none."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from chat_checkpoints import write_terse_qwen3, write_tool_calling_qwen3
from server_helpers import make_engine, serve, wait_idle

from nanovllm.model.checkpoint.dummy import cache_root
from nanovllm.server.app import build_app

pytestmark = pytest.mark.slow  # a 21,000-token prompt, prefilled on a CPU

MODEL = "tiny"
CONTEXT = 65_536
# The versions the recorded requests (fixtures/agents/) come from.
PACKAGES = ("@anthropic-ai/claude-code@2.1.197", "@openai/codex@0.171.0",
            "opencode-ai@1.18.33")
# What each package's own install script runs (npm 11 skips them): (package folder, script).
INSTALL_SCRIPTS = (("@anthropic-ai/claude-code", "install.cjs"),
                   ("opencode-ai", "postinstall.mjs"))
TIMEOUT = 600  # a turn prefills Claude Code's 21,000-token prompt on a CPU


@pytest.fixture(scope="session")
def cli_bin() -> Path:
    """The folder holding the `claude`, `codex` and `opencode` commands."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm and node are needed to install the coding agents' CLIs")
    folder = cache_root() / "agent-clis" / hashlib.sha256(" ".join(PACKAGES).encode()
                                                          ).hexdigest()[:12]
    done = folder / "installed"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        install = subprocess.run([npm, "install", "--prefix", str(folder), "--ignore-scripts",
                                  "--no-audit", "--no-fund", *PACKAGES],
                                 capture_output=True, text=True, timeout=900)
        if install.returncode != 0:
            pytest.skip(f"npm install failed (offline?): {install.stderr[-500:]}")
        for package, script in INSTALL_SCRIPTS:
            subprocess.run([node, script], cwd=folder / "node_modules" / package, check=True,
                           capture_output=True, timeout=300)
        done.write_text("\n".join(PACKAGES))
    return folder / "node_modules" / ".bin"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = make_engine(write_terse_qwen3(tmp_path_factory, CONTEXT), num_kv_blocks=8192,
                         max_model_len=CONTEXT)
    srv = serve(build_app(engine, served_model_name=MODEL, tool_call_parser="hermes",
                          reasoning_parser="qwen3"), engine)
    yield srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


class Agent:
    """One CLI in its own home and project folder, pointed at the server."""

    def __init__(self, bin_dir: Path, home: Path, env: dict[str, str]) -> None:
        self.bin_dir, self.home = bin_dir, home
        self.project = home / "project"
        self.project.mkdir(parents=True, exist_ok=True)
        self.env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
                    **env}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.project,
                              env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
        return done


def claude_code(cli_bin, server, home: Path) -> Agent:
    return Agent(cli_bin, home, {
        "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "unused",
        "ANTHROPIC_MODEL": MODEL, "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1"})


def codex(cli_bin, server, home: Path) -> Agent:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(f"""\
model = "{MODEL}"
model_provider = "nanovllm"
model_context_window = {CONTEXT}
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.nanovllm]
name = "nanovllm"
base_url = "{server.url}/v1"
wire_api = "responses"
""")
    return Agent(cli_bin, home, {"CODEX_HOME": str(codex_home)})


def opencode(cli_bin, server, home: Path) -> Agent:
    agent = Agent(cli_bin, home, {
        "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1", "OPENCODE_DISABLE_SHARE": "1"})
    (agent.project / "opencode.json").write_text(json.dumps({
        "$schema": "https://opencode.ai/config.json", "model": f"nanovllm/{MODEL}",
        "provider": {"nanovllm": {"npm": "@ai-sdk/openai-compatible", "name": "nanovllm",
                                  "options": {"baseURL": f"{server.url}/v1"},
                                  "models": {MODEL: {"name": MODEL}}}}}))
    return agent


def assert_mostly_cached(cached: int, prompt: int) -> None:
    """A continued turn's prompt is the last one's and a few hundred tokens more: all but
    those came from the prefix cache."""
    assert 0.9 * prompt <= cached < prompt, (cached, prompt)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_claude_code_answers_and_continues_from_the_cache(cli_bin, server, tmp_path):
    agent = claude_code(cli_bin, server, tmp_path)
    first = json.loads(agent.run("claude", "-p", "Say hello", "--output-format", "json").stdout)
    assert first["subtype"] == "success" and not first["is_error"]
    again = json.loads(agent.run("claude", "-p", "--continue", "Say it again",
                                 "--output-format", "json").stdout)
    assert again["subtype"] == "success" and again["session_id"] == first["session_id"]
    usage = again["usage"]  # the turn's requests together
    assert_mostly_cached(usage["cache_read_input_tokens"],
                         usage["input_tokens"] + usage["cache_read_input_tokens"])


def test_codex_answers_and_continues_from_the_cache(cli_bin, server, tmp_path):
    agent = codex(cli_bin, server, tmp_path)
    first = json_lines(agent.run("codex", "exec", "--json", "--skip-git-repo-check",
                                 "Say hello").stdout)
    before = next(e["usage"] for e in first if e["type"] == "turn.completed")
    again = json_lines(agent.run("codex", "exec", "--json", "--skip-git-repo-check", "resume",
                                 "--last", "Say it again").stdout)
    usage = next(e["usage"] for e in again if e["type"] == "turn.completed")
    # Codex counts the whole thread: this turn's are what the last turn added
    assert_mostly_cached(usage["cached_input_tokens"] - before["cached_input_tokens"],
                         usage["input_tokens"] - before["input_tokens"])


def test_opencode_answers_and_continues_from_the_cache(cli_bin, server, tmp_path):
    agent = opencode(cli_bin, server, tmp_path)

    def tokens(*args: str) -> dict:
        events = json_lines(agent.run("opencode", "run", "--format", "json", *args).stdout)
        return [e["part"]["tokens"] for e in events if e["type"] == "step_finish"][-1]

    assert tokens("Say hello")["input"] > 0
    again = tokens("--continue", "Say it again")
    assert_mostly_cached(again["cache"]["read"], again["input"] + again["cache"]["read"])


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    """A server whose model calls one of the client's tools, then answers "Done" once the
    tool's result is in its prompt, and only then (write_tool_calling_qwen3): an answer of
    "Done" says that the request after the call carried the result."""
    engine = make_engine(write_tool_calling_qwen3(tmp_path_factory, CONTEXT),
                         num_kv_blocks=8192, max_model_len=CONTEXT)
    srv = serve(build_app(engine, served_model_name=MODEL, tool_call_parser="hermes",
                          reasoning_parser="qwen3"), engine)
    yield srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


def test_claude_code_runs_its_tool_and_answers_from_the_result(cli_bin, tool_server, tmp_path):
    agent = claude_code(cli_bin, tool_server, tmp_path)
    events = json_lines(agent.run("claude", "-p", "Read notes.txt", "--output-format",
                                  "stream-json", "--verbose").stdout)
    content = [c for e in events if e["type"] in ("assistant", "user")
               for c in e["message"]["content"] if isinstance(c, dict)]
    calls = [c["id"] for c in content if c["type"] == "tool_use"]
    results = [c["tool_use_id"] for c in content if c["type"] == "tool_result"]
    assert len(calls) == 1 and results == calls, content
    result = events[-1]
    assert result["type"] == "result" and result["subtype"] == "success", result
    assert result["result"] == "Done" and result["num_turns"] == 2


def test_codex_runs_its_tool_and_answers_from_the_result(cli_bin, tool_server, tmp_path):
    agent = codex(cli_bin, tool_server, tmp_path)
    events = json_lines(agent.run("codex", "exec", "--json", "--skip-git-repo-check",
                                  "List the files").stdout)
    answers = [e["item"]["text"] for e in events
               if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    assert answers == ["Done"], events
    # The session log (`exec --json` shows some tools' calls only): the call, then its output.
    rollout, = (tmp_path / ".codex" / "sessions").rglob("rollout-*.jsonl")
    items = [e["payload"] for e in json_lines(rollout.read_text())
             if e["type"] == "response_item"]
    kinds = [(i["type"], i.get("call_id")) for i in items if i["type"].endswith(
        ("call", "call_output"))]
    assert len(kinds) == 2 and kinds[0][1] == kinds[1][1], kinds
    assert kinds[1][0].endswith("call_output")


def test_opencode_runs_its_tool_and_answers_from_the_result(cli_bin, tool_server, tmp_path):
    agent = opencode(cli_bin, tool_server, tmp_path)
    events = json_lines(agent.run("opencode", "run", "--format", "json", "Read notes.txt").stdout)
    tools = [e["part"] for e in events if e["type"] == "tool_use"]
    assert len(tools) == 1 and tools[0]["state"]["status"] in ("completed", "error"), tools
    steps = [e["part"]["reason"] for e in events if e["type"] == "step_finish"]
    texts = [e["part"]["text"] for e in events if e["type"] == "text"]
    assert steps == ["tool-calls", "stop"] and texts == ["Done"], events
