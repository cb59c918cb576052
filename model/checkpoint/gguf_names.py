"""What llama.cpp's `convert_hf_to_gguf.py` did to a Hugging Face checkpoint, undone: a GGUF's
metadata as the config.json it came from, and its tensor names as the HF names the loader takes
(`loader.py`, from each family's declaration in `architectures/families.py`), so each family's
tensors stay declared in one place.

The converter changes three things besides names. The llama architecture (Llama 2/3, Mistral,
SmolLM2, TinyLlama) has its query and key rows permuted from transformers' rotate-half pairing
(d, d + D/2) to llama.cpp's adjacent pairs (2i, 2i + 1): `unpermute` puts them back. GPT-2's
Conv1D matrices ([in, out]) are stored transposed, as [out, in]: we hand the loader their
transpose (a view). A tied LM head is not stored (no `output.weight`). Llama 3's rope scaling
is stored as one factor per rotary pair (`rope_freqs.weight`), not as config values.
"""

from __future__ import annotations

import numpy as np

from nanovllm.model.checkpoint.safetensors_io import CheckpointError

# general.architecture -> config.json's architecture and model_type.
ARCHITECTURES = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
                 "qwen3": ("Qwen3ForCausalLM", "qwen3"), "gpt2": ("GPT2LMHeadModel", "gpt2")}
# The llama family's GGUF tensor names -> HF names (un-prefixed, as the loader takes them).
LLAMA_GLOBAL = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                "output.weight": "lm_head.weight"}
LLAMA_BLOCK = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
               "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GPT2_GLOBAL = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight",
               "output_norm.weight": "ln_f.weight", "output_norm.bias": "ln_f.bias",
               "output.weight": "lm_head.weight"}
GPT2_BLOCK = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
              "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
ROPE_FREQS = "rope_freqs.weight"


def check_architecture(path, metadata: dict) -> str:
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported; supported GGUF "
                              f"architectures: {', '.join(ARCHITECTURES)}")
    return arch


def hf_config(path, metadata: dict, tensors: dict) -> dict:
    """The config.json the file was converted from, as far as our models read it."""
    arch = check_architecture(path, metadata)
    hf_arch, model_type = ARCHITECTURES[arch]

    def key(name, default=None):
        value = metadata.get(f"{arch}.{name}", default)
        if value is None:
            raise CheckpointError(f"{path}: metadata {arch}.{name} is missing")
        return value

    vocab_size = int(metadata.get(f"{arch}.vocab_size") or tensors["token_embd.weight"].shape[0])
    common = {"architectures": [hf_arch], "model_type": model_type, "vocab_size": vocab_size,
              "tie_word_embeddings": "output.weight" not in tensors}
    if arch == "gpt2":
        ids = token_ids(metadata)
        eos = ids["eos_token_id"]
        return {**common, "n_positions": key("context_length"), "n_embd": key("embedding_length"),
                "n_layer": key("block_count"), "n_head": key("attention.head_count"),
                "layer_norm_epsilon": key("attention.layer_norm_epsilon"),
                "n_inner": key("feed_forward_length"), "bos_token_id": ids["bos_token_id"],
                "eos_token_id": (eos or [None])[0] if isinstance(eos, list) else eos}  # one
    heads = key("attention.head_count")
    config = {**common, "hidden_size": key("embedding_length"),
              "intermediate_size": key("feed_forward_length"),
              "num_hidden_layers": key("block_count"), "num_attention_heads": heads,
              "num_key_value_heads": key("attention.head_count_kv", heads),
              "max_position_embeddings": key("context_length"),
              "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
              "rope_theta": key("rope.freq_base", 10000.0),
              "attention_bias": "blk.0.attn_q.bias" in tensors, **token_ids(metadata)}
    if (head_dim := metadata.get(f"{arch}.attention.key_length")) is not None:
        config["head_dim"] = head_dim
    if (scaling := rope_scaling(path, arch, metadata, tensors)) is not None:
        config["rope_scaling"] = scaling
    return config


def token_ids(metadata: dict) -> dict:
    """bos_token_id, and eos_token_id: every id that ends a turn (EOS, end of turn, end of
    message), EOS first, as a generation_config.json lists them."""
    eos = [metadata[f"tokenizer.ggml.{k}_token_id"] for k in ("eos", "eot", "eom")
           if f"tokenizer.ggml.{k}_token_id" in metadata]
    eos = list(dict.fromkeys(eos))
    return {"bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": eos[0] if len(eos) == 1 else eos}


def rope_scaling(path, arch: str, metadata: dict, tensors: dict) -> dict | None:
    """config.json's rope_scaling: linear from the metadata, Llama 3's from `rope_freqs`."""
    kind = metadata.get(f"{arch}.rope.scaling.type", "none")
    if ROPE_FREQS in tensors:
        factors = np.asarray(tensors[ROPE_FREQS].data, np.float32)
        return {"rope_type": "freq_factors", "factors": [float(f) for f in factors]}
    if kind == "linear":
        return {"rope_type": "linear", "factor": metadata[f"{arch}.rope.scaling.factor"]}
    if kind != "none":
        raise CheckpointError(f"{path}: rope scaling {kind!r} is not supported "
                              "(supported: none, linear, Llama 3's rope_freqs)")
    return None


def hf_name(arch: str, name: str) -> str | None:
    """The HF name (un-prefixed) of a GGUF tensor, or None for one our models do not read."""
    globals_, block = (GPT2_GLOBAL, GPT2_BLOCK) if arch == "gpt2" else (LLAMA_GLOBAL, LLAMA_BLOCK)
    if name in globals_:
        return globals_[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in block:
        layer = "h" if arch == "gpt2" else "layers"
        return f"{layer}.{parts[1]}.{block[parts[2]]}.{parts[3]}"
    return None


def unpermute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of the converter's `LlamaModel.permute` of q or k rows ([n_head * D, ...]):
    each head's rows from (pair, 2) order back to (2, pair), transformers' rotate-half."""
    d = rows.shape[0] // n_head
    return (rows.reshape(n_head, d // 2, 2, *rows.shape[1:]).swapaxes(1, 2)
            .reshape(rows.shape))


def permuted_heads(arch: str, hf: str, config: dict) -> int | None:
    """How many heads a tensor's rows were permuted over (llama's q and k), else None."""
    if arch != "llama":
        return None
    if ".self_attn.q_proj." in hf:
        return config["num_attention_heads"]
    if ".self_attn.k_proj." in hf:
        return config["num_key_value_heads"]
    return None
