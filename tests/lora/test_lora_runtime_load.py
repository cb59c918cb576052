"""Loading an adapter at run time pauses the other requests' decoding by no step: the engine
thread reads and installs it between two steps (`AsyncEngine.add_lora`, what the server's
/v1/load_lora_adapter runs), and every request that was decoding gets its token in each step
around the load, counted in engine steps (no clock)."""

from __future__ import annotations

from dataclasses import replace

from nanovllm import EngineConfig, LoRARequest, SamplingParams
from nanovllm.async_engine import AsyncEngine
from nanovllm.engine import LLMEngine

PROMPT = [5, 17, 300, 2, 41, 9]
PARAMS = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)


class Outputs:
    """An OutputSink that keeps what the engine delivers."""
    def __init__(self) -> None:
        self.items: list = []

    def put(self, item) -> None:
        self.items.append(item)


def test_a_run_time_load_skips_no_step_of_the_running_requests(tiny_ckpt, lora_adapter):
    engine = AsyncEngine(LLMEngine(EngineConfig(str(tiny_ckpt), num_kv_blocks=128,
                                                enable_lora=True, max_loras=2))).start()
    try:
        inner = engine.engine
        engine.add_lora(LoRARequest("first", 1, str(lora_adapter("gpt2", seed=1)))).result()
        sinks = {}
        for rid, adapter_id in (("base", 0), ("adapted", 1)):
            request = replace(inner.processor.process(rid, PROMPT, PARAMS), adapter_id=adapter_id)
            sinks[rid] = Outputs()
            engine.add_request(request, sinks[rid]).result()

        def progress() -> tuple[int, dict[str, int]]:  # (engine steps, tokens per request)
            return inner.num_steps, {rid: r.seqs[0].num_output_tokens
                                     for rid, r in inner.requests.items()}

        def load() -> tuple:
            before = progress()
            inner.add_lora(LoRARequest("second", 2, str(lora_adapter("gpt2", seed=2))))
            return before, progress()

        started = engine.call(progress).result()
        loaded_at, after_load = engine.call(load).result()
        later = engine.call(progress).result()
    finally:
        engine.shutdown()
    assert set(started[1]) == set(later[1]) == {"base", "adapted"}  # both still decoding
    assert started[1]["base"] >= 1 and started[1]["adapted"] >= 1
    assert after_load == loaded_at  # the load itself spans no step: it runs between two
    steps = later[0] - loaded_at[0]
    assert steps >= 1
    for rid in ("base", "adapted"):  # a token in every step since the load, none skipped
        assert later[1][rid] - loaded_at[1][rid] == steps
    assert 2 in inner.runner.adapters
