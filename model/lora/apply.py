"""A step's weights with each row's adapter applied: the adapted fields of every layer wrapped
(`model/weights/adapted.py`) so that `linear` multiplies the batch by the base once, then adds
the rows' low-rank updates grouped by adapter (`math.add_row_updates`)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from nanovllm.model.architectures.family import Family
from nanovllm.model.lora.adapter import LoRAAdapter
from nanovllm.model.lora.math import add_row_updates
from nanovllm.model.weights.adapted import AdaptedWeight


def row_groups(row_adapters: np.ndarray) -> dict[int, np.ndarray | slice]:
    """Adapter id -> the rows that use it (a slice where they are contiguous: no gather copy);
    id 0, no adapter, is left out."""
    groups = {}
    for adapter_id in np.unique(row_adapters):
        if adapter_id:
            rows = np.flatnonzero(row_adapters == adapter_id)
            contiguous = rows[-1] - rows[0] + 1 == len(rows)
            groups[int(adapter_id)] = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
    return groups


def adapted_weights(weights, family: Family, adapters: dict[int, LoRAAdapter],
                    row_adapters: np.ndarray):
    """`weights` for one step whose row i uses adapter `row_adapters[i]` (0: none). A copy of
    the layers' dataclasses with wrapped fields; the arrays are shared, never changed."""
    groups = row_groups(row_adapters)
    layers = []
    for i, layer in enumerate(getattr(weights, family.layers_field)):
        members: dict[str, list] = {}
        for adapter_id, rows in groups.items():
            for field, pairs in adapters[adapter_id].layers[i].items():
                members.setdefault(field, []).extend((rows, pair) for pair in pairs)
        layers.append(replace(layer, **{
            field: AdaptedWeight(getattr(layer, field), partial(add_row_updates, groups=found))
            for field, found in members.items()}) if members else layer)
    return replace(weights, **{family.layers_field: layers})
