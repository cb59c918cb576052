"""A tiny Gemma 3 checkpoint written by transformers' own Gemma3ForCausalLM (the tests'
reference), importable from every test folder (`tests/` is on sys.path through its conftest)."""

from __future__ import annotations

# Two sliding layers around a global one, a window of 8 (shorter than most prompts), a
# query_pre_attn_scalar apart from head_dim, soft-capped logits: every Gemma difference shows.
GEMMA_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=1024,
                  max_position_embeddings=256, sliding_window=8,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  query_pre_attn_scalar=24, final_logit_softcapping=30.0, rope_theta=1000000.0,
                  rope_local_base_freq=10000.0, initializer_range=0.1)


def write_hf_gemma3(out, seed: int = 0, **overrides):
    """A random Gemma3ForCausalLM written by transformers, with random norms (zeros, the
    initialisation, would hide a dropped one or a missing 1 +), a Llama 3 style tokenizer and a
    generation_config.json listing two EOS ids."""
    import torch
    import transformers

    from nanovllm.model.checkpoint.dummy import cache_root
    from nanovllm.model.checkpoint.tokenizer_files import write_llama_tokenizer

    options = {**GEMMA_TINY, **overrides}
    ids = write_llama_tokenizer(out, options["vocab_size"], options["max_position_embeddings"],
                                cache_root() / "tokenizers")
    eos = [ids["<|eot_id|>"], ids["<|endoftext|>"]]
    config = transformers.Gemma3TextConfig(**options, bos_token_id=ids["<|begin_of_text|>"],
                                           eos_token_id=eos[0], pad_token_id=eos[1])
    torch.manual_seed(seed)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.2 * torch.randn_like(p))
    model.generation_config.eos_token_id = eos
    model.save_pretrained(out)
    return out
