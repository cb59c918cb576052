"""LoRA adapters as the server serves them (vLLM's interface): each a model name clients put in
"model", listed by GET /v1/models with the base as its `parent`, loaded at start-up
(--lora-modules) or at run time (server/api/lora/). The engine reads and checks an adapter whole
before it installs it (`LLMEngine.add_lora`): a refused one leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from nanovllm.values.lora_request import LoRARequest


@dataclass(slots=True)
class ServedAdapters:
    base: str  # the served model they run on (their `parent` in /v1/models)
    by_name: dict[str, LoRARequest] = field(default_factory=dict)
    next_id: int = 1  # ids are the server's: never reused, so a name's id names one load
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one load or unload at a time

    def new_request(self, name: str, path: str) -> LoRARequest:
        lora = LoRARequest(name, self.next_id, path, self.base)
        self.next_id += 1
        return lora

    def install(self, engine) -> None:
        """Loads every adapter into a newly started engine of the base model (blocking): the
        start-up's --lora-modules, and those loaded at run time before an unload of the base."""
        for lora in list(self.by_name.values()):
            engine.add_lora(lora).result()

    async def load(self, engine, name: str, path: str) -> LoRARequest:
        """Loads the adapter into the engine under `name` (its errors raised as they come)."""
        async with self.lock:
            if name in self.by_name:
                raise ValueError(f"The lora adapter {name!r} has already been loaded.")
            lora = self.new_request(name, path)
            await asyncio.wrap_future(engine.add_lora(lora))
            self.by_name[name] = lora
            return lora

    async def unload(self, engine, name: str) -> bool:
        """False if no adapter is called `name`; the engine refuses while requests use it."""
        async with self.lock:
            lora = self.by_name.get(name)
            if lora is None:
                return False
            await asyncio.wrap_future(engine.remove_lora(lora.lora_int_id))
            del self.by_name[name]
            return True


def parse_lora_module(text: str) -> tuple[str, str, str | None]:
    """One --lora-modules value: `name=path`, or vLLM's JSON form
    {"name": ..., "path": ..., "base_model_name": ...}; (name, path, base)."""
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
            name, path = spec["name"], spec["path"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--lora-modules {text!r}: expected JSON with \"name\" and "
                             f"\"path\" ({e})") from e
        return str(name), str(path), spec.get("base_model_name")
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules {text!r}: expected name=path or JSON")
    return name, path, None


def served_adapters(modules: list[str], base: str) -> ServedAdapters:
    """The adapters of --lora-modules, named and numbered; each is loaded (and checked whole,
    a start-up error naming it) when the base model's engine starts (`install`)."""
    served = ServedAdapters(base)
    for text in modules:
        name, path, _ = parse_lora_module(text)  # (the parent shown is the served base)
        if name == base or name in served.by_name:
            raise ValueError(f"--lora-modules: the name {name!r} is taken")
        served.by_name[name] = served.new_request(name, path)
    return served
