"""vllm:iteration_tokens_total as vLLM counts it: each step observes the prompt tokens of the
requests whose first token it generated plus every token it generated, so that over requests
of P prompt and G generated tokens run one at a time the sum is N * (P + G) over N * G steps
(vLLM's tests/entrypoints/openai/test_metrics.py expects exactly that)."""

from __future__ import annotations

from nanovllm import SamplingParams

PROMPTS = [list(range(10 + i)) for i in range(3)]
GENERATED = 5
PARAMS = SamplingParams(max_tokens=GENERATED, ignore_eos=True)


def run(engine, prompts):
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, PARAMS)
    while engine.has_unfinished_requests():
        engine.step()


def test_requests_one_at_a_time(make_engine):
    engine = make_engine()
    for prompt in PROMPTS:
        run(engine, [prompt])
    stats = engine.get_stats()
    assert stats.iteration_tokens_sum == sum(map(len, PROMPTS)) + len(PROMPTS) * GENERATED
    assert sum(stats.iteration_tokens) == len(PROMPTS) * GENERATED  # steps observed
    assert stats.iteration_tokens_sum == stats.prompt_tokens_total + stats.generation_tokens_total
    assert stats.iteration_tokens[2] == len(PROMPTS)  # the prefills, 11 to 13 tokens: le=16
    assert stats.iteration_tokens[0] == len(PROMPTS) * (GENERATED - 1)  # one token: le=1


def test_a_batch_and_a_chunked_prompt(make_engine):
    engine = make_engine(max_num_batched_tokens=16)
    run(engine, PROMPTS + [list(range(40))])  # 40 tokens: prefilled in chunks of up to 16
    stats = engine.get_stats()
    total = sum(map(len, PROMPTS)) + 40 + (len(PROMPTS) + 1) * GENERATED
    assert stats.iteration_tokens_sum == total
    assert stats.iteration_tokens_sum == stats.prompt_tokens_total + stats.generation_tokens_total
    assert sum(stats.iteration_tokens) == engine.num_steps
