"""Checkpoints on disk: reading safetensors into GPT2Weights, and writing random-weight
checkpoints of our own (`dummy.py`) for machines that cannot reach the hub. The model's math
lives one folder up; nothing here computes."""
