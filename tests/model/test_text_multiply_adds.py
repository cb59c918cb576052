"""`text_multiply_adds` (what the embeddings benchmark holds against the float32 roof) against
torch's own count of the same model's floating-point operations (two per multiply-add), with
transformers' eager attention (torch's counter does not count its fused CPU attention)."""

from __future__ import annotations

import pytest

from nanovllm.model.architectures.bert_config import BertConfig
from nanovllm.model.architectures.llama_config import LlamaConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


def torch_multiply_adds(model, length: int) -> int:
    ids = torch.zeros((1, length), dtype=torch.long)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    return counter.get_total_flops() // 2


def test_bert_counts_the_linear_layers_and_both_attention_products():
    ours = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96)
    hf = transformers.BertConfig(**ours.to_hf_dict(), attn_implementation="eager")
    theirs = transformers.BertModel(hf, add_pooling_layer=False).eval()
    for length in (1, 16):
        assert ours.text_multiply_adds(length) == torch_multiply_adds(theirs, length)


def test_llama_counts_grouped_kv_heads_and_the_mlp_s_three_matrices():
    # One token: causal attention's pairs are all of them, as torch counts them at any length.
    ours = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_kv_heads=2, vocab_size=128)
    theirs = transformers.LlamaModel(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, attn_implementation="eager")).eval()
    assert ours.text_multiply_adds(1) == torch_multiply_adds(theirs, 1)
    # Eight tokens cost eight times one token's linear layers and attention over 1 + 2 + ... + 8
    # (query, key) pairs, where eight lone tokens had one pair each: layers x 2 products x width.
    extra_pairs = 8 * 9 // 2 - 8
    assert ours.text_multiply_adds(8) - 8 * ours.text_multiply_adds(1) == 2 * 2 * 64 * extra_pairs
