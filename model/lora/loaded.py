"""The adapters an engine has loaded, by id: what the runner applies to each step's rows.

An adapter is read and checked whole (`adapter.load_adapter`) before it is installed, so a step
never sees half of one; `max_loras` bounds how many are loaded at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanovllm.model.architectures.family import Family
from nanovllm.model.lora.adapter import AdapterError, LoRAAdapter, load_adapter
from nanovllm.model.lora.apply import adapted_weights


class LoadedAdapters:
    def __init__(self, family: Family, cfg, max_loras: int, max_lora_rank: int,
                 bfloat16: bool = False):
        self.family, self.cfg = family, cfg
        self.bfloat16 = bfloat16  # A and B in bfloat16 (beside a bfloat16 base)
        self.max_loras, self.max_lora_rank = max_loras, max_lora_rank
        self.by_id: dict[int, LoRAAdapter] = {}
        # Every id ever loaded, and what it named: an id names one adapter for the engine's life
        # (the prefix cache keys blocks by it, and may still hold an unloaded one's).
        self.named: dict[int, tuple[str, str]] = {}

    def __contains__(self, adapter_id: int) -> bool:
        return adapter_id in self.by_id

    def load(self, name: str, adapter_id: int, path: str | Path) -> LoRAAdapter:
        """Reads and checks the adapter at `path`, then installs it as `adapter_id` (an
        AdapterError, with nothing installed, if it cannot run here)."""
        if adapter_id < 1:
            raise AdapterError(f"LoRA adapter {name!r}: lora_int_id must be a positive integer, "
                               f"got {adapter_id!r}")
        if self.named.get(adapter_id, (name, str(path))) != (name, str(path)):
            raise AdapterError(f"LoRA adapter {name!r}: lora_int_id {adapter_id} named "
                               f"{self.named[adapter_id][0]!r} ({self.named[adapter_id][1]}); "
                               "an id names one adapter for the engine's life")
        if adapter_id not in self.by_id and len(self.by_id) >= self.max_loras:
            raise AdapterError(f"LoRA adapter {name!r}: {len(self.by_id)} adapters are loaded, "
                               f"max_loras is {self.max_loras}; unload one first")
        try:
            adapter = load_adapter(name, adapter_id, path, self.family, self.cfg,
                                   self.max_lora_rank, self.bfloat16)
        except AdapterError:
            raise
        except Exception as e:  # a file no check foresaw: still the adapter's fault
            raise AdapterError(f"LoRA adapter {name!r} ({path}): unreadable "
                               f"({type(e).__name__}: {e})") from e
        self.by_id[adapter_id] = adapter
        self.named[adapter_id] = (name, str(path))
        return adapter

    def remove(self, adapter_id: int) -> bool:
        return self.by_id.pop(adapter_id, None) is not None

    def weights_for(self, weights, row_adapters: np.ndarray):
        """The step's weights, each row with its adapter (`apply.adapted_weights`)."""
        return adapted_weights(weights, self.family, self.by_id, row_adapters)
