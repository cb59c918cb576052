"""The compiled kernels and their scaffolding: numba loops, LLVM IR dot products and register
tiles, what every kernel shares (`shared.py`: fast-math flags, exp, float16 bits, when to use the
threads). They import the weight formats and the platform only, never a layer or an architecture."""
