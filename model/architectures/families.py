"""Every model family we run, each one declaration (`family.py`): its architectures, config,
forward pass and reference, the Hugging Face tensors and the weight fields they fill, its
presets; and the table from config.json's architecture to its family (vLLM's registry).

A new family is a composition file (with its config and plain reference) and one entry here.
"""

from __future__ import annotations

from dataclasses import replace

from nanovllm.model.architectures import (
    bert,
    bert_reference,
    gemma3,
    gemma3_reference,
    gpt2,
    gpt2_reference,
    llama,
    llama_reference,
    qwen3,
)
from nanovllm.model.architectures.bert_config import BERT_PRESETS, BertConfig
from nanovllm.model.architectures.family import (
    Family,
    Param,
    Preset,
    TiedHead,
    matrix,
    table,
    vector,
)
from nanovllm.model.architectures.gemma3_config import GEMMA3_PRESETS, Gemma3Config
from nanovllm.model.architectures.gpt2_config import PRESETS, GPT2Config
from nanovllm.model.architectures.llama_config import (
    LLAMA_ARCHITECTURES,
    LLAMA_PRESETS,
    LlamaConfig,
)


def residual_std(cfg: GPT2Config) -> float:
    """GPT-2's initialisation of the projections into the residual stream: 0.02 / sqrt(2 L)."""
    return 0.02 / (2 * cfg.n_layer) ** 0.5


# Hugging Face's GPT-2 keeps q/k/v fused already (c_attn) and stores its linear layers as
# Conv1D, [in, out]: turned once at load. Old checkpoints' mask buffers are no parameters.
GPT2 = Family(
    architectures={"GPT2LMHeadModel": "gpt2"}, config=GPT2Config, forward=gpt2.forward,
    compile_kernels=gpt2.compile_kernels, reference=gpt2_reference,
    weights=gpt2.GPT2Weights, layer=gpt2.BlockWeights, layers_field="blocks",
    prefix="transformer.", buffers=r"h\.\d+\.attn\.(bias|masked_bias)",
    dims=lambda c: {"V": c.vocab_size, "P": c.n_positions, "E": c.n_embd, "3E": 3 * c.n_embd,
                    "4E": 4 * c.n_embd},
    embeddings={"wte": matrix("wte.weight V E"), "wpe": table("wpe.weight P E")},
    layer_prefix="h.{i}.",
    layer_params={
        "ln_1_g": vector("ln_1.weight E", init="ones"), "ln_1_b": vector("ln_1.bias E"),
        "attn_w": matrix("attn.c_attn.weight E 3E", transpose=True),
        "attn_b": vector("attn.c_attn.bias 3E"),
        "attn_proj_w": matrix("attn.c_proj.weight E E", transpose=True, init=residual_std),
        "attn_proj_b": vector("attn.c_proj.bias E"),
        "ln_2_g": vector("ln_2.weight E", init="ones"), "ln_2_b": vector("ln_2.bias E"),
        "fc_w": matrix("mlp.c_fc.weight E 4E", transpose=True), "fc_b": vector("mlp.c_fc.bias 4E"),
        "fc_proj_w": matrix("mlp.c_proj.weight 4E E", transpose=True, init=residual_std),
        "fc_proj_b": vector("mlp.c_proj.bias E")},
    head={"ln_f_g": vector("ln_f.weight E", init="ones"), "ln_f_b": vector("ln_f.bias E")},
    tied_head=TiedHead("lm_head.weight", embedding="wte"),
    presets={name: Preset(cfg, ("distilbert" if name == "distilgpt2" else "openai-community")
                          + f"/{name}") for name, cfg in PRESETS.items()},
    tokenizer="gpt2")


# The Llama family's presets stand for these repos: the chat models where there is one (they
# carry a chat template); Llama 3.2 is gated.
LLAMA_REPOS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
               "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
               "tinyllama": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
               "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
               "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
               "qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-1.7b": "Qwen/Qwen3-1.7B",
               "qwen3-embedding-0.6b": "Qwen/Qwen3-Embedding-0.6B",
               "mistral-7b": "mistralai/Mistral-7B-v0.1"}
LLAMA_POOLING = {"qwen3-embedding-0.6b": ("lasttoken", 32768)}


def llama_dims(c: LlamaConfig) -> dict[str, int]:
    return {"V": c.vocab_size, "E": c.hidden_size, "I": c.intermediate_size, "D": c.head_dim,
            "Q": c.num_attention_heads * c.head_dim, "KV": c.num_kv_heads * c.head_dim}


# Llama, Mistral, Qwen2 and Qwen3: nn.Linear layers, [out, in] already; q/k/v fused into one
# matrix and gate/up into another, so that a step makes one matmul of each.
LLAMA_LAYER = {
    "input_norm": vector("input_layernorm.weight E", init="ones"),
    "qkv_w": matrix("self_attn.q_proj.weight Q E", "self_attn.k_proj.weight KV E",
                    "self_attn.v_proj.weight KV E"),
    "qkv_b": vector("self_attn.q_proj.bias Q", "self_attn.k_proj.bias KV",
                    "self_attn.v_proj.bias KV", when="attention_bias"),
    "o_w": matrix("self_attn.o_proj.weight E Q"),
    "o_b": vector("self_attn.o_proj.bias E", when="o_proj_bias"),
    "post_norm": vector("post_attention_layernorm.weight E", init="ones"),
    "gate_up_w": matrix("mlp.gate_proj.weight I E", "mlp.up_proj.weight I E"),
    "down_w": matrix("mlp.down_proj.weight E I"),
    "q_norm": vector("self_attn.q_norm.weight D", init="ones", when="qk_norm"),
    "k_norm": vector("self_attn.k_norm.weight D", init="ones", when="qk_norm"),
}
LLAMA = Family(
    architectures={k: v for k, v in LLAMA_ARCHITECTURES.items() if k != "Qwen3ForCausalLM"},
    config=LlamaConfig, forward=llama.forward, compile_kernels=llama.compile_kernels,
    reference=llama_reference, weights=llama.LlamaWeights, layer=llama.LayerWeights,
    buffers=r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq", dims=llama_dims,
    embeddings={"embed": matrix("embed_tokens.weight V E")}, layer_prefix="layers.{i}.",
    layer_params=LLAMA_LAYER, head={"norm": vector("norm.weight E", init="ones")},
    tied_head=TiedHead("lm_head.weight", embedding="embed", field="lm_head"),
    presets={name: Preset(cfg, LLAMA_REPOS[name]) for name, cfg in LLAMA_PRESETS.items()
             if cfg.architecture != "Qwen3ForCausalLM"})
# Qwen3: Llama's tensors, with the per-head q/k norms its config flags; its own attention.
QWEN3 = replace(
    LLAMA, architectures={"Qwen3ForCausalLM": "qwen3"}, forward=qwen3.forward,
    compile_kernels=qwen3.compile_kernels,
    presets={name: Preset(cfg, LLAMA_REPOS[name], pooling=LLAMA_POOLING.get(name))
             for name, cfg in LLAMA_PRESETS.items() if cfg.architecture == "Qwen3ForCausalLM"})


def bert_dims(c: BertConfig) -> dict[str, int]:
    return {"V": c.vocab_size, "P": c.max_position_embeddings, "T": c.type_vocab_size,
            "E": c.hidden_size, "I": c.intermediate_size, "L": c.num_labels}


SELF = "attention.self."
# BERT: query/key/value fused (rows in that order); its word embedding stays float32 (it is
# only gathered from). A BertModel's pooler is optional (embedding never reads it), a
# classifier's is required.
BERT = Family(
    architectures={"BertModel": "bert", "BertForSequenceClassification": "bert"},
    config=BertConfig, forward=bert.encode, compile_kernels=bert.compile_kernels,
    reference=bert_reference, weights=bert.BertWeights, layer=bert.LayerWeights,
    prefix="bert.", buffers=r"embeddings\.position_ids", dims=bert_dims,
    embeddings={"word": table("embeddings.word_embeddings.weight V E"),
                "position": table("embeddings.position_embeddings.weight P E"),
                "token_type": table("embeddings.token_type_embeddings.weight T E"),
                "embed_norm_g": vector("embeddings.LayerNorm.weight E", init="ones"),
                "embed_norm_b": vector("embeddings.LayerNorm.bias E")},
    layer_prefix="encoder.layer.{i}.",
    layer_params={
        "qkv_w": matrix(f"{SELF}query.weight E E", f"{SELF}key.weight E E",
                        f"{SELF}value.weight E E"),
        "qkv_b": vector(f"{SELF}query.bias E", f"{SELF}key.bias E", f"{SELF}value.bias E"),
        "o_w": matrix("attention.output.dense.weight E E"),
        "o_b": vector("attention.output.dense.bias E"),
        "attn_norm_g": vector("attention.output.LayerNorm.weight E", init="ones"),
        "attn_norm_b": vector("attention.output.LayerNorm.bias E"),
        "up_w": matrix("intermediate.dense.weight I E"), "up_b": vector("intermediate.dense.bias I"),
        "down_w": matrix("output.dense.weight E I"), "down_b": vector("output.dense.bias E"),
        "out_norm_g": vector("output.LayerNorm.weight E", init="ones"),
        "out_norm_b": vector("output.LayerNorm.bias E")},
    head={"pooler_w": matrix("pooler.dense.weight E E", when="is_classifier", optional=True),
          "pooler_b": vector("pooler.dense.bias E", when="is_classifier", optional=True),
          "classifier_w": matrix("classifier.weight L E", when="is_classifier"),
          "classifier_b": vector("classifier.bias L", when="is_classifier")},
    presets={
        "all-minilm-l6-v2": Preset(BERT_PRESETS["all-minilm-l6-v2"],
                                   "sentence-transformers/all-MiniLM-L6-v2", ("mean", 256)),
        "bge-small-en-v1.5": Preset(BERT_PRESETS["bge-small-en-v1.5"], "BAAI/bge-small-en-v1.5",
                                    ("cls", 512)),
        "ms-marco-minilm-l6-v2": Preset(
            BERT_PRESETS["ms-marco-minilm-l6-v2"], "cross-encoder/ms-marco-MiniLM-L6-v2",
            config_extra={"sentence_transformers": {
                "activation_fn": "torch.nn.modules.activation.Sigmoid"}})},
    tokenizer="wordpiece")


def gemma_norm(name: str) -> Param:
    """Gemma's RMSNorm gains are stored as 1 + weight (transformers initialises weight to 0)."""
    return vector(name, add=1.0)


# Gemma 3: Llama's tensor names, four norms a layer, q/k norms; the LM head is the embedding.
GEMMA3 = Family(
    architectures={"Gemma3ForCausalLM": "gemma3_text"}, config=Gemma3Config,
    forward=gemma3.forward, compile_kernels=gemma3.compile_kernels,
    reference=gemma3_reference, weights=gemma3.Gemma3Weights, layer=gemma3.LayerWeights,
    dims=llama_dims, embeddings={"embed": matrix("embed_tokens.weight V E")},
    layer_prefix="layers.{i}.",
    layer_params={
        "input_norm": gemma_norm("input_layernorm.weight E"),
        "post_attn_norm": gemma_norm("post_attention_layernorm.weight E"),
        "pre_mlp_norm": gemma_norm("pre_feedforward_layernorm.weight E"),
        "post_mlp_norm": gemma_norm("post_feedforward_layernorm.weight E"),
        "qkv_w": LLAMA_LAYER["qkv_w"], "q_norm": gemma_norm("self_attn.q_norm.weight D"),
        "k_norm": gemma_norm("self_attn.k_norm.weight D"), "o_w": LLAMA_LAYER["o_w"],
        "gate_up_w": LLAMA_LAYER["gate_up_w"], "down_w": LLAMA_LAYER["down_w"]},
    head={"norm": gemma_norm("norm.weight E")},
    tied_head=TiedHead("lm_head.weight", embedding="embed", field="lm_head"),
    presets={"gemma-3-270m": Preset(GEMMA3_PRESETS["gemma-3-270m"], "google/gemma-3-270m-it"),
             "gemma-3-1b": Preset(GEMMA3_PRESETS["gemma-3-1b"], "google/gemma-3-1b-it")})

FAMILIES = (GPT2, LLAMA, QWEN3, BERT, GEMMA3)

ARCHITECTURES: dict[str, Family] = {name: f for f in FAMILIES for name in f.architectures}
# Old configs without `architectures` still say what they are in `model_type`.
MODEL_TYPES: dict[str, str] = {}
for _family in FAMILIES:
    for _name, _type in _family.architectures.items():
        MODEL_TYPES.setdefault(_type, _name)
# Every preset `--load-format dummy` knows, by name.
PRESET_FAMILIES: dict[str, Family] = {name: f for f in FAMILIES for name in f.presets}


def family_of(cfg) -> Family:
    """The family a loaded config belongs to."""
    return ARCHITECTURES[cfg.architecture]
