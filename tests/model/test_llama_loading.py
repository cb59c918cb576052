"""Loading the Llama family: the architecture registry's refusals, config fields as the hub
and transformers 5 write them, generation_config's EOS list, and dummy presets."""

from __future__ import annotations

import json
import shutil

import pytest

from nanovllm import LLM, SamplingParams
from nanovllm.model import CheckpointError
from nanovllm.model.architectures.llama_config import LLAMA_PRESETS, LlamaConfig
from nanovllm.model.architectures.registry import ARCHITECTURES, load_checkpoint
from nanovllm.model.checkpoint.dummy import write_dummy_checkpoint


def edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_unsupported_architecture_is_refused_by_name(llama_ckpt, tmp_path):
    model_dir = edit_config(llama_ckpt("llama-gqa"), tmp_path / "m", architectures=["MambaForCausalLM"])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model_dir)
    assert "'MambaForCausalLM' is not supported" in str(err.value)
    for name in ARCHITECTURES:
        assert name in str(err.value)
    with pytest.raises(CheckpointError, match="MambaForCausalLM"):
        LLM(str(model_dir))


@pytest.mark.parametrize("rope", [
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
])
def test_unknown_rope_scaling_type_is_refused_by_name(llama_ckpt, tmp_path, rope):
    model_dir = edit_config(llama_ckpt("llama-gqa"), tmp_path / "m", **rope)
    kind = next(iter(rope.values()))["rope_type"]
    with pytest.raises(CheckpointError, match=f"rope_scaling type '{kind}' is not supported; "
                                              "supported: default, linear, llama3"):
        load_checkpoint(model_dir)


def test_hub_style_config_reads_like_transformers5_style():
    """rope_theta + rope_scaling (hub config.json) and rope_parameters (transformers 5)."""
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hub = LlamaConfig.from_dict({"architectures": ["LlamaForCausalLM"], "rope_theta": 500000.0,
                                 "rope_scaling": scaling, "eos_token_id": [1, 2]})
    new = LlamaConfig.from_dict({"architectures": ["LlamaForCausalLM"], "eos_token_id": [1, 2],
                                 "rope_parameters": {**scaling, "rope_theta": 500000.0}})
    assert hub == new and hub.rope_theta == 500000.0 and hub.eos_token_ids == (1, 2)


def test_a_sequence_ends_at_any_eos_of_generation_config(llama_ckpt):
    """generation_config.json lists <|eot_id|> and <|endoftext|>: a stop on either is EOS."""
    model_dir = llama_ckpt("llama-gqa")
    llm = LLM(str(model_dir), num_kv_blocks=64)
    eos = llm.engine.model_config.eos_token_ids
    assert len(eos) == 2
    for token in eos:  # a logit bias makes each EOS the greedy choice in turn
        out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=5,
                                                       logit_bias={token: 100.0}),
                           use_tqdm=False)[0].outputs[0]
        assert (out.token_ids, out.finish_reason, out.stop_reason) == ([token], "stop", None)


def test_text_prompts_get_bos_as_transformers_tokenizes_them(llama_ckpt):
    from transformers import AutoTokenizer

    model_dir = llama_ckpt("llama-gqa")
    llm = LLM(str(model_dir), num_kv_blocks=64)
    out = llm.generate(["def hello(): return 'world'"], SamplingParams(max_tokens=1),
                       use_tqdm=False)[0]
    hf = AutoTokenizer.from_pretrained(model_dir)
    assert out.prompt_token_ids == hf("def hello(): return 'world'").input_ids
    assert out.prompt_token_ids[0] == llm.engine.model_config.bos_token_id


@pytest.mark.parametrize("preset", LLAMA_PRESETS)
def test_every_preset_has_its_real_shapes(preset):
    """The presets' parameter counts as published (from the real configs' shapes)."""
    millions = {"smollm2-135m": 134.5, "smollm2-360m": 361.8, "tinyllama": 1100.0,
                "llama-3.2-1b": 1235.8, "qwen2.5-0.5b": 494.0, "mistral-7b": 7241.7,
                "qwen3-0.6b": 596.0, "qwen3-1.7b": 1720.6, "qwen3-embedding-0.6b": 595.8}
    assert LLAMA_PRESETS[preset].num_params / 1e6 == pytest.approx(millions[preset], rel=2e-3)


@pytest.mark.parametrize("preset", LLAMA_PRESETS)
def test_every_preset_is_the_model_transformers_builds_from_its_config(preset):
    """The config.json a preset writes makes, in transformers (on the meta device: no memory),
    a model whose parameters are the tensors our loader expects, name for name, shape for
    shape."""
    import torch
    import transformers

    from nanovllm.model.architectures.families import family_of

    cfg = LLAMA_PRESETS[preset]
    expected_shapes = family_of(cfg).shapes
    d = cfg.to_hf_dict()
    hf_config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    theirs = {name.removeprefix("model."): tuple(p.shape) for name, p in model.named_parameters()}
    assert theirs == expected_shapes(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params


def test_dummy_preset_loads_and_says_random(tmp_path, caplog):
    write_dummy_checkpoint(tmp_path / "d", "smollm2-135m", num_hidden_layers=2, vocab_size=2048)
    cfg, _ = load_checkpoint(tmp_path / "d")
    assert (cfg.hidden_size, cfg.num_kv_heads, cfg.vocab_size) == (576, 3, 2048)
    llm = LLM(str(tmp_path / "d"), load_format="dummy", num_kv_blocks=16)
    assert llm.engine.is_dummy and "RANDOM weights" in caplog.text
    assert llm.generate(["hi"], SamplingParams(max_tokens=3, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0].token_ids.__len__() == 3
