"""LoRARequest: which LoRA adapter a request runs through, as vLLM names it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoRARequest:
    lora_name: str         # what it is called (the server's model name for it)
    lora_int_id: int       # positive, unique among the engine's adapters: what sequences carry
    lora_path: str         # a PEFT adapter directory (adapter_config.json, adapter_model.safetensors)
    base_model_name: str | None = None  # the base it was trained on (reported, not checked)
