"""One file per model family that only composes layers (`gpt2.py`, `llama.py`, ... : the ones
`families.py` lists), beside its config and its plain-numpy reference (`*_config.py`,
`*_reference.py`), and the forward trace over those references. `families.py` declares each
family (`family.py`: its checkpoint's tensors and the fields they fill, its presets) and maps
config.json's architecture to it; `registry.py` loads a checkpoint directory by it, and alone
imports checkpoint/, which imports the rest of this room."""
