"""The lab: the instruments behind the figures in docs/ (profiles, memory, accuracy, instruction
peaks, hostile traffic, the tour's pictures) and the project's own performance targets. Run from
a checkout with `python -m nanovllm.scripts.lab.NAME`; they are not part of the `nanovllm`
command and are not installed with the package."""
