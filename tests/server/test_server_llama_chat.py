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
    srv = serve(build_app(loop, served_model_name=MODEL, model_root=str(model_dir),
                          enable_tokenizer_info=True), loop)
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


def test_tokenizer_info_is_the_checkpoints_tokenizer_as_transformers_loads_it(llama_server):
    """vLLM's answer: the loaded (fast) class, the tokenizer's special tokens and template."""
    import httpx
    import transformers

    hf = transformers.AutoTokenizer.from_pretrained(llama_server[1])
    info = httpx.get(f"{llama_server[0].url}/tokenizer_info", timeout=60).json()
    assert info["tokenizer_class"] == "PreTrainedTokenizerFast"  # tokenizer_config.json's
    assert getattr(transformers, info["tokenizer_class"]) is type(hf)
    assert (info["bos_token"], info["eos_token"]) == (hf.bos_token, hf.eos_token)
    assert info["bos_token"] == "<|begin_of_text|>"
    assert info["chat_template"] == hf.chat_template
    models = httpx.get(f"{llama_server[0].url}/v1/models", timeout=60).json()["data"][0]
    assert info["model_max_length"] == hf.model_max_length == models["max_model_len"]


def test_tokenizer_info_of_a_hub_style_config_without_a_class(llama_ckpt, tmp_path):
    """Hub configs write special tokens as AddedToken objects: vLLM answers with their text.
    With no `tokenizer_class`, the class AutoTokenizer picks for config.json's model_type."""
    import json
    import shutil

    import httpx

    model_dir = shutil.copytree(llama_ckpt("mistral-window"), tmp_path / "ckpt")
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    del config["tokenizer_class"]
    added = {"1020": config["bos_token"], "1023": config["eos_token"]}
    config["added_tokens_decoder"] = {i: {"content": t, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                      for i, t in added.items()}
    config["bos_token"] = config["added_tokens_decoder"]["1020"]
    path.write_text(json.dumps(config))
    loop = make_engine(model_dir, num_kv_blocks=16)
    srv = serve(build_app(loop, served_model_name=MODEL, enable_tokenizer_info=True), loop)
    try:
        info = httpx.get(f"{srv.url}/tokenizer_info", timeout=60).json()
    finally:
        srv.stop()
        loop.shutdown()
    assert info["tokenizer_class"] == "LlamaTokenizerFast"  # Mistral's, in transformers
    assert (info["bos_token"], info["eos_token"]) == ("<|begin_of_text|>", "<|eot_id|>")
    assert info["added_tokens_decoder"] == added
