"""A weight matrix with a per-row update added after its product: how a step applies adapters.

`linear` multiplies the whole batch by `base` once, as it would without the update, then calls
`update(x, out)`, which adds each row's own correction into `out` in place (LoRA's low-rank
products, gathered by the adapter each row uses: `model/lora/`). The wrapper lives for one step;
the model's weights are never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class AdaptedWeight:
    base: object                                          # any `quant.Weight` [out, in]
    update: Callable[[np.ndarray, np.ndarray], None]      # (x [n, in], out [n, out]): out += ...

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape
