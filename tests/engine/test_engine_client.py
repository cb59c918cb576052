"""The server reaches the engine only through EngineClient, and AsyncEngine and
ProcessEngineClient provide all of it."""

from __future__ import annotations

import asyncio
import queue
import re
import threading
from pathlib import Path

import pytest

from nanovllm import AsyncEngine, EngineClient, EngineConfig, LLMEngine, SamplingParams
from nanovllm.async_engine import ENGINE_THREAD
from nanovllm.engine_client import QueueSink, deliver
from nanovllm.engine_core.client import ProcessEngineClient
from nanovllm.inspection import EngineInspector, Inspector

SERVER = Path(__file__).resolve().parents[2] / "server"


def interface_names() -> set[str]:
    return {n for n in vars(EngineClient) if not n.startswith("_")} | set(
        EngineClient.__annotations__)


def test_async_engine_provides_the_whole_interface(make_engine):
    client = AsyncEngine(make_engine())  # not started: nothing here needs the thread
    assert interface_names() >= {"processor", "add_request", "abort", "abort_all", "stats",
                                 "is_alive", "error", "tokenizer", "max_model_len", "shutdown"}
    assert [n for n in sorted(interface_names()) if not hasattr(client, n)] == []
    assert isinstance(client, EngineClient)  # the same check, as the protocol makes it
    assert client.degraded is None and client.replica_stats is None  # one engine, in one piece


def test_the_engine_process_client_provides_both_interfaces(tiny_ckpt):
    client = ProcessEngineClient(EngineConfig(str(tiny_ckpt), num_kv_blocks=64))
    try:
        assert isinstance(client, EngineClient) and isinstance(client.inspector, EngineInspector)
        assert [n for n in sorted(interface_names()) if not hasattr(client, n)] == []
        assert client.is_alive and client.degraded is None and client.replica_stats is None
        inspector = client.inspector
        assert (inspector.n_layer, inspector.n_head, inspector.num_kv_heads) == (2, 4, 4)
        assert not inspector.step_mode.paused and not inspector.step_mode_enabled
        assert client.tokenizer.decode(client.tokenizer.encode("a tokenizer of its own")) == \
            "a tokenizer of its own"
    finally:
        client.shutdown()
    assert not client.is_alive


def test_the_interface_holds_only_what_serving_needs():
    """The web page's views of one engine are an interface of their own (inspection.py)."""
    inspection = {n for n in vars(EngineInspector) if not n.startswith("_")} | set(
        EngineInspector.__annotations__)
    # 16: requests in and out, the engine's state and limits, LoRA adapters in and out
    assert len(interface_names()) <= 16 and not interface_names() & inspection


def test_the_inspector_provides_the_whole_inspection_interface(make_engine):
    inspector = Inspector(AsyncEngine(make_engine()))
    assert isinstance(inspector, EngineInspector)
    assert (inspector.n_layer, inspector.n_head, inspector.num_kv_heads) == (2, 4, 4)
    assert not inspector.step_mode.paused and not inspector.step_mode_enabled


def test_the_server_uses_nothing_outside_the_interface():
    used = set()
    # Ray's replica (server/ray/) owns a real engine; everything else sees the client as `engine`.
    for path in [p for p in SERVER.rglob("*.py") if "ray" not in p.relative_to(SERVER).parts]:
        used |= set(re.findall(r"(?<![\w.])(?:ctx\.|self\._)?engine\.(\w+)", path.read_text()))
    assert used and used <= interface_names(), used - interface_names()


def test_deliver_wakes_each_event_loop_once_per_step_and_keeps_each_sinks_order():
    """A step's outputs reach the QueueSinks of one loop in one callback (not one per request),
    in order; any other sink gets its own put; a closed loop is skipped without an error."""
    loop = asyncio.new_event_loop()
    woken = []
    schedule = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args: (woken.append(args[0]), schedule(*args))[1]
    queue: asyncio.Queue = asyncio.Queue()
    first, second = QueueSink(loop, queue, 0), QueueSink(loop, queue, 1)

    class Listed(list):
        def put(self, item):
            self.append(item)

    other = Listed()
    closed = asyncio.new_event_loop()
    closed.close()
    step = [(first, "a1"), (second, "b1"), (other, "c1"), (QueueSink(closed, queue, 2), "lost")]
    for items in (step, [(second, "b2"), (first, "a2")]):  # two steps, on the engine's thread
        engine_thread = threading.Thread(target=deliver, args=(items,))
        engine_thread.start()
        engine_thread.join()

    async def take(n):
        return [await queue.get() for _ in range(n)]

    got = loop.run_until_complete(asyncio.wait_for(take(4), 5))
    loop.close()
    assert len(woken) == 2  # one per step
    assert [x for x in got if x[0] == 0] == [(0, "a1"), (0, "a2")]
    assert [x for x in got if x[0] == 1] == [(1, "b1"), (1, "b2")]
    assert other == ["c1"]


def test_from_config_loads_the_model_on_the_thread_that_steps_it(tiny_ckpt, monkeypatch):
    """Loading compiles and first runs the parallel kernels, and each thread that starts parallel
    work gets an OpenMP team of its own: the engine thread loads the model it steps, so that
    the server's cores hold one team."""
    loaded_on = []
    load = LLMEngine.__init__

    def recording_load(self, config):  # the real load, its thread noted
        loaded_on.append(threading.current_thread())
        load(self, config)

    monkeypatch.setattr(LLMEngine, "__init__", recording_load)
    client = AsyncEngine.from_config(EngineConfig(model=str(tiny_ckpt), num_kv_blocks=64))
    try:
        assert loaded_on == [client.thread] and client.thread is not threading.current_thread()
        assert client.thread.name == ENGINE_THREAD and client.is_alive
        outputs: queue.SimpleQueue = queue.SimpleQueue()
        params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
        client.add_request(client.processor.process("r", [1, 2, 3], params), outputs).result(30)
        while not (out := outputs.get(timeout=30)).finished:
            pass
        assert len(out.outputs[0].token_ids) == 5
    finally:
        client.shutdown()
    assert not client.thread.is_alive()


def test_from_config_raises_what_loading_raised(tmp_path):
    before = set(threading.enumerate())
    with pytest.raises(Exception) as raised:
        LLMEngine(EngineConfig(model=str(tmp_path / "missing")))
    with pytest.raises(type(raised.value), match=re.escape(str(raised.value))):
        AsyncEngine.from_config(EngineConfig(model=str(tmp_path / "missing")))
    leftover = [t for t in set(threading.enumerate()) - before if t.name == ENGINE_THREAD]
    for t in leftover:
        t.join(5)
    assert not any(t.is_alive() for t in leftover)  # the loader's thread ended with the error
