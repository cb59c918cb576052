"""Adapters that cannot run on the base are refused whole, with the adapter's name and the
problem; nothing of them is loaded, and the engine serves on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from nanovllm import LLM, InvalidRequestError, LoRARequest, SamplingParams
from nanovllm.model.lora.adapter import AdapterError

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


@pytest.fixture
def broken(lora_adapter, tmp_path):
    """broken(edit_config=None, edit_tensors=None) -> a copy of a GPT-2 adapter, changed."""
    def make(edit_config=None, edit_tensors=None):
        out = tmp_path / "broken"
        shutil.copytree(lora_adapter("gpt2"), out)
        if edit_config:
            config = json.loads((out / CONFIG).read_text())
            edit_config(config)
            (out / CONFIG).write_text(json.dumps(config))
        if edit_tensors:
            tensors = dict(load_file(out / WEIGHTS))
            edit_tensors(tensors)
            save_file(tensors, out / WEIGHTS)
        return out
    return make


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    return LLM(str(tiny_ckpt), enable_lora=True, num_kv_blocks=64, max_lora_rank=8)


KEY = "base_model.model.transformer.h.0.attn.c_attn.lora_"


def widen_rank(t):  # rank 16 everywhere: above max_lora_rank 8
    for k in list(t):
        t[k] = np.zeros((16, t[k].shape[1]) if ".lora_A." in k else (t[k].shape[0], 16),
                        np.float32)


@pytest.mark.parametrize("edit_config,edit_tensors,problem", [
    (None, lambda t: t.update({KEY + "B.weight": np.zeros((100, 4), np.float32)}),
     "layer 0 attn.c_attn: lora_A (4, 64) and lora_B (100, 4) do not fit"),
    (None, widen_rank, "rank 16 is above max_lora_rank 8"),
    (lambda c: c.update(target_modules=["c_attn", "wte"]), None, "unknown target module(s) ['wte']"),
    (None, lambda t: t.update({"base_model.model.lm_head.lora_A.weight": np.zeros((4, 64), np.float32)}),
     "tensor base_model.model.lm_head.lora_A.weight is not a LoRA weight of a projection"),
    (None, lambda t: t.pop(KEY + "A.weight"), "layer 0 attn.c_attn has no lora_A weight"),
    (lambda c: c.update(modules_to_save=["lm_head"]), None, "modules_to_save ['lm_head']"),
    (lambda c: c.update(use_dora=True), None, "DoRA"),
    (lambda c: c.update(bias="all"), None, "trained biases"),
], ids=["shape", "rank", "target", "lm-head-tensor", "half-missing", "modules-to-save", "dora",
        "bias"])
def test_bad_adapter_is_refused_by_name(llm, broken, edit_config, edit_tensors, problem):
    path = broken(edit_config, edit_tensors)
    with pytest.raises(AdapterError) as e:
        llm.generate([[1, 2, 3]], use_tqdm=False, lora_request=LoRARequest("mine", 3, str(path)))
    assert "LoRA adapter 'mine'" in str(e.value) and problem in str(e.value)
    assert llm.engine.list_loras() == set()
    assert llm.generate([[1, 2, 3]], SamplingParams(max_tokens=2), use_tqdm=False)


@pytest.mark.parametrize("missing", [WEIGHTS, CONFIG])
def test_missing_file(llm, broken, missing):
    path = broken()
    (path / missing).unlink()
    with pytest.raises(AdapterError, match=f"LoRA adapter 'gone'.*{missing} is missing"):
        llm.engine.add_lora(LoRARequest("gone", 4, str(path)))


def test_load_unload_and_limits(tiny_ckpt, lora_adapter):
    llm = LLM(str(tiny_ckpt), enable_lora=True, num_kv_blocks=64, max_loras=2)
    engine, path = llm.engine, str(lora_adapter("gpt2"))
    assert engine.add_lora(LoRARequest("a", 1, path)) and engine.add_lora(LoRARequest("b", 2, path))
    assert not engine.add_lora(LoRARequest("a", 1, path))  # loaded already
    with pytest.raises(AdapterError, match="max_loras is 2"):
        engine.add_lora(LoRARequest("c", 3, path))
    assert engine.remove_lora(2) and not engine.remove_lora(2)
    assert engine.add_lora(LoRARequest("c", 3, path)) and engine.list_loras() == {1, 3}
    with pytest.raises(AdapterError, match="lora_int_id 2 named 'b'"):  # ids are not reused
        engine.add_lora(LoRARequest("other", 2, path))
    with pytest.raises(InvalidRequestError, match="no LoRA adapter with id 9"):
        from dataclasses import replace
        engine.add(replace(engine.processor.process("r", [1, 2], SamplingParams()), adapter_id=9))


def test_lora_needs_enable_lora(make_llm, lora_adapter):
    with pytest.raises(InvalidRequestError, match="enable_lora"):
        make_llm().generate([[1, 2]], use_tqdm=False,
                            lora_request=LoRARequest("a", 1, str(lora_adapter("gpt2"))))


def test_the_engine_view_shows_each_sequence_s_adapter(llm, lora_adapter):
    """The web page's engine view (the snapshot) says which adapter each sequence runs."""
    from dataclasses import replace

    engine = llm.engine
    engine.add_lora(LoRARequest("shown", 5, str(lora_adapter("gpt2"))))
    params = SamplingParams(max_tokens=4)
    for rid, adapter_id in (("with", 5), ("without", 0)):
        engine.add(replace(engine.processor.process(rid, [1, 2, 3], params),
                           adapter_id=adapter_id))
    engine.step()
    shown = {s.request_id: s.adapter_id for s in engine.snapshot().running}
    assert shown == {"with": 5, "without": 0}
    assert engine.snapshot().to_dict()["running"][0]["adapter_id"] in (0, 5)
    engine.abort_request(["with", "without"])
    assert engine.remove_lora(5)
