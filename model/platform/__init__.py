"""What the host offers the model: the CPU's vector instructions (`cpu.py`) and how numpy's and
numba's thread pools share its cores (`threads.py`). A room of its own, the lowest, because the
kernels and the package's entry points both read it and it reads nothing of the model: it
imports nothing from the rooms above (weights, kernels, layers, architectures, checkpoint)."""
