"""The compiled kernels and their scaffolding: numba loops, LLVM IR dot products and register
tiles, when a kernel runs on numba's threads (`parallel.py`) and what every kernel shares
(`shared.py`: fast-math flags, exp, float16 bits). They import the weight formats and the
platform only, never a layer or an architecture."""
