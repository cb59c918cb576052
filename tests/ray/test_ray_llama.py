"""A Ray Serve engine replica serving a tiny grouped-query Llama behind the OpenAI endpoint:
the ingress tokenizes, renders the checkpoint's own chat template and checks requests
without an engine of its own, from what the replica ships it (server/ray/replica.py).

One replica is enough for what depends on the architecture; spreading, affinity and failures
are test_ray_serve.py's, on GPT-2.
"""

from __future__ import annotations

import openai
import pytest
from ray_helpers import start_deployment

from nanovllm import LLM, SamplingParams

pytestmark = pytest.mark.ray

MODEL = "tiny-llama-ray"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def llama_replica(llama_ckpt):
    from nanovllm import EngineConfig

    model_dir = llama_ckpt("llama-gqa")
    deployment = start_deployment(EngineConfig(str(model_dir), num_kv_blocks=128), num_cpus=1,
                                  replicas=1, served_model_name=MODEL, model_root=str(model_dir))
    yield deployment.live, model_dir
    deployment.stop()


@pytest.fixture
def client(llama_replica):
    return openai.OpenAI(base_url=f"{llama_replica[0].url}/v1", api_key="unused",
                         max_retries=0, timeout=120)


def test_completions_equal_llm_generate(llama_replica, client):
    """Greedy text and token counts as a local engine on the same checkpoint gives them (the
    prompt gets the tokenizer's BOS on the ingress, as it does locally)."""
    prompt = "def add(a, b):"
    served = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=8,
                                       extra_body={"ignore_eos": True})
    local = LLM(str(llama_replica[1]), num_kv_blocks=64).generate(
        [prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
        use_tqdm=False)[0]
    assert served.choices[0].text == local.outputs[0].text
    assert served.usage.prompt_tokens == len(local.prompt_token_ids)


def test_chat_uses_the_checkpoints_template(llama_replica, client):
    """The ingress renders the template in the checkpoint's tokenizer_config.json: the prompt
    is transformers' apply_chat_template(..., add_generation_prompt=True)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(llama_replica[1])
    expected = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                      return_dict=True)["input_ids"]
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                          max_completion_tokens=2)
    assert chat.usage.prompt_tokens == len(expected)


def test_the_pages_views_of_one_engine_are_off_across_replicas(llama_replica):
    """No inspector across replicas: the page's info says so (no model shape to draw), and the
    forward-pass view answers 503 with the reason (tests/ui covers grouped heads on one engine)."""
    import httpx

    info = httpx.get(f"{llama_replica[0].url}/ui/api/info", timeout=30).json()
    assert info["inspection"] is False and "num_kv_heads" not in info
    r = httpx.post(f"{llama_replica[0].url}/ui/api/trace", json={"prompt": "hello"}, timeout=30)
    assert r.status_code == 503 and "--data-parallel-size" in r.json()["error"]["message"]
