"""A Llama checkpoint served with no flags: chat uses the checkpoint's own chat template
(tokenizer_config.json, a Llama 3 style template with bos_token, raise_exception and
add_generation_prompt), giving the prompt token count transformers' apply_chat_template gives;
completions add BOS as transformers' tokenizer does and equal LLM.generate."""

from __future__ import annotations

import openai
import pytest
from server_helpers import error_of, make_engine, serve

from nanovllm import LLM, SamplingParams
from nanovllm.server.app import build_app

MODEL = "tiny-llama"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def llama_server(llama_ckpt):
    model_dir = llama_ckpt("llama3-tied")
    loop = make_engine(model_dir, num_kv_blocks=256)
    srv = serve(build_app(loop, served_model_name=MODEL, model_root=str(model_dir)), loop)
    yield srv, model_dir
    srv.stop()
    loop.shutdown()


@pytest.fixture
def client(llama_server):
    return openai.OpenAI(base_url=f"{llama_server[0].url}/v1", api_key="unused", max_retries=0,
                         timeout=60)


def test_chat_prompt_is_the_checkpoints_template_as_transformers_renders_it(llama_server, client):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(llama_server[1])
    expected = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                      return_dict=True)["input_ids"]
    assert expected.count(hf.bos_token_id) == 1  # BOS once: from the template, none added
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=1)
    assert chat.usage.prompt_tokens == len(expected)


def test_the_templates_raise_exception_is_a_400_naming_messages(llama_server):
    import httpx

    resp = httpx.post(f"{llama_server[0].url}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [{"role": "tool", "content": "x"}]})
    err = error_of(resp, 400)
    assert err["param"] == "messages"


def test_completions_equal_llm_generate(llama_server, client):
    prompt = "def add(a, b):"
    served = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=8,
                                       extra_body={"ignore_eos": True})
    llm = LLM(str(llama_server[1]), num_kv_blocks=64)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                       use_tqdm=False)[0]
    assert served.choices[0].text == out.outputs[0].text
    assert served.usage.prompt_tokens == len(out.prompt_token_ids)


def test_tokenize_adds_bos_to_a_prompt_and_not_to_rendered_messages(llama_server, client):
    import httpx

    url = f"{llama_server[0].url}/tokenize"
    prompt = httpx.post(url, json={"prompt": "hi"}, timeout=60).json()["tokens"]
    bare = httpx.post(url, json={"prompt": "hi", "add_special_tokens": False}, timeout=60).json()
    assert prompt[1:] == bare["tokens"] and len(prompt) == len(bare["tokens"]) + 1
    chat = httpx.post(url, json={"messages": MESSAGES}, timeout=60).json()
    served = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=1)
    assert chat["count"] == served.usage.prompt_tokens
    assert chat["tokens"].count(prompt[0]) == 1
