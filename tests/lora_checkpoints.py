"""PEFT LoRA adapters on the tests' random-weight bases, written by PEFT itself, and their
references: PEFT's merged model in transformers. Importable from every test folder."""

from __future__ import annotations

from pathlib import Path

GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hf_base(base_dir):
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()


def write_peft_adapter(base_dir, out, targets: list[str] | str, *, r: int = 4, alpha: int = 8,
                       seed: int = 1, std: float = 0.1, **options) -> Path:
    """A LoRA adapter of `base_dir` made by PEFT with random A and B (PEFT starts B at zero,
    which would hide every error), saved as PEFT saves it. GPT-2's Conv1D layers take PEFT's
    fan_in_fan_out."""
    import peft
    import torch

    model = hf_base(base_dir)
    conv1d = model.config.model_type == "gpt2"
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                             fan_in_fan_out=conv1d, **options)
    adapted = peft.get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_" in name:
                p.copy_(std * torch.randn_like(p))
    adapted.save_pretrained(out)
    return Path(out)


def hf_merged(base_dir, adapter_dir):
    """transformers' base model with PEFT's adapter merged into its weights: the reference."""
    from peft import PeftModel
    return PeftModel.from_pretrained(hf_base(base_dir), adapter_dir).merge_and_unload().eval()
