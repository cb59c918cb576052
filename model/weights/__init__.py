"""The weights as they are held in memory: int8, bfloat16 and packed float32 matrices and their
rows (`quant.py`), GGML's block formats (`ggml_blocks.py`) and their repacked matrices
(`block_quant.py`), and the precisions a checkpoint may be served in (`precision.py`). Plain
formats every kernel reads: they import nothing from the rest of the model."""
