"""Checkpoints on disk: reading safetensors into a family's weights, and writing random-weight
checkpoints of our own (`dummy.py`) for machines that cannot reach the hub, with their tokenizer
files. It imports the architectures' configs and weight classes and the weight formats; nothing
here computes."""
