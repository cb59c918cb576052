"""Server fixtures: a real LLMEngine on the tiny checkpoint, served by real uvicorn on 127.0.0.1.

One engine thread (AsyncEngine) is shared by the session; two apps are served over it, one
open and one with an API key, each on its own free port. Tests talk to them with the real
`openai` client and httpx. `wait_idle` is the way to assert that every KV block came back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from server_helpers import API_KEY, MODEL, LiveServer, make_engine, serve

from nanovllm.async_engine import AsyncEngine
from nanovllm.server.app import build_app
from nanovllm.server.chat.template import load_chat_template

GPT2_CHAT_TEMPLATE = Path(__file__).parents[2] / "examples" / "chat_template_gpt2.jinja"


@pytest.fixture(scope="session")
def engine(tiny_ckpt) -> Iterator[AsyncEngine]:
    client = make_engine(tiny_ckpt)
    yield client
    client.shutdown()


@pytest.fixture(scope="session")
def live(engine, tiny_ckpt) -> Iterator[LiveServer]:
    srv = serve(build_app(engine, served_model_name=MODEL, model_root=str(tiny_ckpt)),
                engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def live_auth(engine) -> Iterator[LiveServer]:
    srv = serve(build_app(engine, served_model_name=MODEL, api_key=API_KEY), engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def live_chat(engine, tiny_ckpt) -> Iterator[LiveServer]:
    """Served with the example chat template and /tokenizer_info."""
    template = load_chat_template(str(GPT2_CHAT_TEMPLATE))
    srv = serve(build_app(engine, served_model_name=MODEL, chat_template=template,
                          enable_tokenizer_info=True), engine)
    yield srv
    srv.stop()


def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def chat_client(live_chat) -> openai.OpenAI:
    return openai_client(live_chat)


@pytest.fixture
def chat_http(live_chat) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_chat.url, timeout=60) as c:
        yield c


@pytest.fixture
def client(live) -> openai.OpenAI:
    return openai_client(live)


@pytest.fixture
def aclient(live) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0,
                              timeout=120)


@pytest.fixture
def http(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c
