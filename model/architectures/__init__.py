"""One file per model family that only composes layers (`gpt2.py`, `llama.py`, `qwen3.py`,
`bert.py`), beside its config and its plain-numpy reference (`*_config.py`, `*_reference.py`),
and the forward trace over those references. `registry.py` maps config.json's architecture to a
family's functions and loaders; it alone imports checkpoint/, which imports the rest of this
room."""
