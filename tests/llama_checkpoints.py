"""Tiny Llama-family checkpoints written by transformers' own classes (the tests' references),
importable from every test folder (`tests/` is on sys.path through its conftest)."""

from __future__ import annotations

LLAMA_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
                  max_position_embeddings=256, initializer_range=0.1)
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
# Every architecture and option, each a tiny checkpoint that transformers' own classes write.
LLAMA_VARIANTS = {
    "llama-gqa": ("Llama", dict()),
    "llama-mha-bias": ("Llama", dict(num_key_value_heads=4, attention_bias=True)),
    "llama3-tied": ("Llama", dict(tie_word_embeddings=True, rope_theta=500000.0,
                                  rope_scaling=LLAMA3_SCALING)),
    "qwen2": ("Qwen2", dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "mistral-window": ("Mistral", dict(sliding_window=12)),
    # head_dim 32 where hidden / heads is 16; q_norm and k_norm random like every norm below
    "qwen3": ("Qwen3", dict(tie_word_embeddings=True, rope_theta=1000000.0, head_dim=32)),
}


def write_hf_llama(out, family: str, *, bf16: bool = False, max_shard_size: str | None = None,
                   seed: int = 0, **overrides):
    """A random checkpoint of `family` ("Llama", "Qwen2", "Mistral", "Qwen3") written by
    transformers' own classes, with random norms and biases (an init of ones and zeros would
    hide a dropped one), a Llama 3 style tokenizer and a generation_config.json listing two EOS ids."""
    import torch
    import transformers

    from nanovllm.model.checkpoint.dummy import cache_root
    from nanovllm.model.checkpoint.tokenizer_files import write_llama_tokenizer

    options = {**LLAMA_TINY, **overrides}
    ids = write_llama_tokenizer(out, options["vocab_size"], options["max_position_embeddings"],
                                cache_root() / "tokenizers")
    eos = [ids["<|eot_id|>"], ids["<|endoftext|>"]]
    config = getattr(transformers, f"{family}Config")(
        **options, bos_token_id=ids["<|begin_of_text|>"], eos_token_id=eos[0])
    torch.manual_seed(seed)
    model = getattr(transformers, f"{family}ForCausalLM")(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.generation_config.eos_token_id = eos
    if bf16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return out
