"""LoRA adapters: PEFT's files read and checked against the base model (`adapter.py`), the
low-rank update as plain numpy (`math.py`), and a step's weights with each row's adapter applied
(`apply.py`)."""
