"""Fixtures for the LoRA tests: random-weight bases (GPT-2, Llama, Qwen3) and PEFT adapters on
them, each written once per session (tests/lora_checkpoints.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("peft")

from lora_checkpoints import GPT2_TARGETS, LLAMA_TARGETS, write_peft_adapter  # noqa: E402

BASES = {"gpt2": None, "llama": "llama-gqa", "qwen3": "qwen3"}


@pytest.fixture(scope="session")
def lora_base(tiny_ckpt, llama_ckpt):
    """lora_base(arch) -> a base checkpoint directory: "gpt2", "llama" or "qwen3"."""
    return lambda arch: tiny_ckpt if BASES[arch] is None else llama_ckpt(BASES[arch])


@pytest.fixture(scope="session")
def lora_adapter(lora_base, tmp_path_factory):
    """lora_adapter(arch, seed, **options) -> a PEFT adapter directory of that base (every
    projection targeted unless `targets` says otherwise), written once."""
    made = {}

    def get(arch: str, seed: int = 1, **options):
        key = (arch, seed, tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in made:
            options.setdefault("targets", GPT2_TARGETS if arch == "gpt2" else LLAMA_TARGETS)
            made[key] = write_peft_adapter(lora_base(arch), tmp_path_factory.mktemp("lora"),
                                           options.pop("targets"), seed=seed, **options)
        return made[key]
    return get
