"""Real agent libraries complete a tool round trip against the real server on a random-weight
checkpoint: possible because a required or named tool_choice is enforced by the grammar, so
even this model returns a call with schema-valid arguments. Each library then runs the tool and
sends its result back (an assistant turn with tool_calls and a `tool` message, rendered by the
checkpoint's own template), and gets an answer. Nothing reaches OpenAI: every client is given
the server's base_url, and tracing is off."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Literal

import pytest
from chat_checkpoints import write_hermes_llama
from server_helpers import make_engine, serve, wait_idle
from venvs import venv_with

from nanovllm.server.app import build_app

MODEL = "tiny-agent"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    engine = make_engine(write_hermes_llama(tmp_path_factory), num_kv_blocks=256)
    srv = serve(build_app(engine, served_model_name=MODEL, tool_call_parser="hermes"), engine)
    yield srv
    srv.stop()
    wait_idle(engine)
    engine.shutdown()


def test_openai_agents_sdk_runs_a_function_tool(server, monkeypatch):
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    seen = []

    @function_tool
    def get_weather(city: Literal["Paris", "Rome", "Oslo"]) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"Sunny in {city}."

    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    agent = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather],
                  model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
                  # required for the first turn (reset to auto after a call, the SDK's default)
                  model_settings=ModelSettings(tool_choice="required", max_tokens=120,
                                               temperature=1.0, seed=1))
    result = asyncio.run(Runner.run(agent, "Weather in Paris?", max_turns=3))
    assert seen and seen[0] in ("Paris", "Rome", "Oslo")
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"], kinds
    assert kinds[-1] == "message_output_item" and isinstance(result.final_output, str)


def test_langchain_bind_tools_round_trip(server):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: Literal[1, 2, 3], b: Literal[1, 2, 3]) -> int:
        """Add two integers."""
        return a + b

    llm = ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key="unused",
                     max_retries=0, temperature=1.0, seed=2, max_tokens=60)
    messages = [HumanMessage("What is 2 + 3?")]
    # strict: the schema forbids other properties (which a random model would write forever)
    ai = llm.bind_tools([add], tool_choice="add", strict=True).invoke(messages)
    [call] = ai.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}
    assert all(v in (1, 2, 3) for v in call["args"].values())
    result = add.invoke(call["args"])
    messages += [ai, ToolMessage(str(result), tool_call_id=call["id"])]
    answer = llm.bind_tools([add], tool_choice="none", strict=True).invoke(messages)
    assert isinstance(answer.content, str) and not answer.tool_calls
    assert answer.response_metadata["finish_reason"] in ("stop", "length")


def test_pydantic_ai_structured_output(server):
    from pydantic import BaseModel, Field
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    class Weather(BaseModel):
        city: str = Field(max_length=10)
        celsius: int = Field(ge=-50, le=50)

    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=f"{server.url}/v1",
                                                           api_key="unused"))
    agent = Agent(model, output_type=Weather,
                  model_settings={"temperature": 1.0, "seed": 3, "max_tokens": 80})
    result = agent.run_sync("Weather in Paris?")
    assert isinstance(result.output, Weather)
    calls = [p for m in result.all_messages() for p in m.parts
             if p.part_kind == "tool-call"]
    assert calls and json.loads(calls[-1].args_as_json_str()) == result.output.model_dump()


# instructor pins jiter<0.15 while newer openai releases need jiter>=0.16, so it cannot share
# the main venv (which tests the newest openai): it runs in a venv of its own, with the openai
# pip resolves for it, as its users get.
INSTRUCTOR = ["instructor>=1.17"]


@pytest.mark.slow
def test_instructor_tools_mode_reasks_through_a_tool_message(server):
    """instructor in TOOLS mode: a named tool_choice for the response model. Its validator
    refuses the first answer, so instructor sends the call back with the error as a `tool`
    message (its re-ask) and validates the second answer."""
    script = Path(__file__).with_name("instructor_round_trip.py")
    run = subprocess.run([str(venv_with("instructor", INSTRUCTOR)), str(script),
                          f"{server.url}/v1", MODEL], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["weather"]["city"] in ("Paris", "Rome", "Oslo") and result["refused"]
    sent = result["sent"]
    assert len(sent) == 2
    assert sent[0]["tool_choice"] == {"type": "function", "function": {"name": "Weather"}}
    *_, call, answer = sent[-1]["messages"]
    [tool_call] = call["tool_calls"]
    assert call["role"] == "assistant" and tool_call["function"]["name"] == "Weather"
    assert answer["role"] == "tool" and answer["tool_call_id"] == tool_call["id"]
    assert "Measure again." in answer["content"]


def test_openai_agents_sdk_streamed(server, monkeypatch):
    """The SDK's streamed run reads chat's tool-call deltas chunk by chunk."""
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    seen = []

    @function_tool
    def get_time(zone: Literal["CET", "UTC"]) -> str:
        """The time in a zone."""
        seen.append(zone)
        return "12:00"

    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    agent = Agent(name="clock", tools=[get_time], tool_use_behavior="stop_on_first_tool",
                  model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
                  model_settings=ModelSettings(tool_choice="get_time", max_tokens=60, seed=4))

    async def run():
        result = Runner.run_streamed(agent, "Time?")
        async for _ in result.stream_events():
            pass
        return result

    result = asyncio.run(run())
    assert seen and seen[0] in ("CET", "UTC") and result.final_output == "12:00"


def test_openai_agents_sdk_over_the_responses_api(server, monkeypatch):
    """The SDK's default model speaks /v1/responses, a front end over the same chat path."""
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    seen = []

    @function_tool
    def get_weather(city: Literal["Paris", "Rome", "Oslo"]) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"Sunny in {city}."

    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    # An answer cut at max_output_tokens is an error to the SDK: stop at the tool's output.
    agent = Agent(name="weather", tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                  model=OpenAIResponsesModel(model=MODEL, openai_client=client),
                  model_settings=ModelSettings(tool_choice="required", max_tokens=120, seed=5,
                                               store=False))
    result = asyncio.run(Runner.run(agent, "Weather in Rome?", max_turns=3))
    assert seen and seen[0] in ("Paris", "Rome", "Oslo")
    assert result.final_output == f"Sunny in {seen[0]}."
