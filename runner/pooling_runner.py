"""The runner of pooling models: a step's whole texts in, one vector (or score) per text out.

A pooling sequence is computed once, whole, and keeps nothing: no KV cache, no sampling. An
encoder (BERT) runs all of a step's texts in one batched pass (`bert.encode`); so does a decoder
started with `--runner pooling` (GPT-2, the Llama family): one causal forward pass over the step's
texts side by side, each attending to itself, without a cache, its LM head replaced by the
identity so that the "logits" are the final hidden states (after the final norm, as
transformers' `last_hidden_state`). Then `model/layers/pooling.py` pools
them as the checkpoint says, cuts Matryoshka dimensions and normalizes; a cross-encoder's
classifier and activation make a score instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from nanovllm.contract.step import ModelRunnerOutput, NewSequence, SchedulerOutput
from nanovllm.model.architectures import bert
from nanovllm.model.architectures.bert_config import BertConfig
from nanovllm.model.architectures.registry import family_of
from nanovllm.model.checkpoint.pooling_config import PoolingConfig
from nanovllm.model.layers.attention import whole_sequences
from nanovllm.model.layers.kernel_needs import kernel_needs
from nanovllm.model.layers.pooling import activate, normalize, pool
from nanovllm.values.pooling_params import PoolingParams


@dataclass(slots=True)
class PoolingWork:
    """One text of a step: its tokens (and token types: which text of a pair each is in)."""
    token_ids: list[int]
    token_type_ids: list[int] | None
    params: PoolingParams


class PoolingRunner:
    speculator = None  # (a pooling sequence generates no tokens to speculate on)
    # (Nothing to keep for the step-by-step mode: it reads a pooling step's inputs from the step.)
    keep_last_run = False
    def __init__(self, cfg, weights, pooling: PoolingConfig):
        self.cfg, self.pooling = cfg, pooling
        self.is_encoder = isinstance(cfg, BertConfig)
        if self.is_encoder:
            self.weights = weights
        else:  # the final hidden states instead of logits: see the module's doc
            eye = np.eye(cfg.n_embd, dtype=np.float32)
            self.weights = replace(weights, lm_head=eye)
        self.family = family_of(cfg)
        self.family.compile_kernels(kernel_needs(self.weights))
        self.announced: dict[int, NewSequence] = {}  # by seq id, until it is finished

    def run(self, step: SchedulerOutput) -> ModelRunnerOutput:
        """The step's sequences' results (`ModelRunnerOutput.pooled`), by seq id; what each is
        (its pooling params, its token types) was announced in its `NewSequence`."""
        for new in step.new_seqs:
            self.announced[new.seq_id] = new
        for seq_id in step.finished_seq_ids:
            self.announced.pop(seq_id, None)
        news = [self.announced[s.seq_id] for s in step.scheduled]
        work = [PoolingWork(s.token_ids, new.token_type_ids, new.pooling)
                for s, new in zip(step.scheduled, news)]
        results = self.compute(work)
        return ModelRunnerOutput({}, {}, {}, pooled={s.seq_id: r for s, r in
                                                     zip(step.scheduled, results)})

    def step_took(self, seconds: float) -> None:
        """The engine's step took `seconds`: nothing here is tuned by time."""

    def compute(self, work: list[PoolingWork]) -> list[np.ndarray]:
        """Each text's result: its embedding [E'] or its scores [num_labels]."""
        if not work:
            return []
        if self.is_encoder:
            hidden, starts = self._encode(work)
        else:
            hidden, starts = self._decode(work)
        results, scores, vectors = [], None, None
        if any(w.params.task == "score" for w in work):
            scores = activate(bert.classify(self.weights, hidden, starts), self.pooling.activation)
        if any(w.params.task == "embed" for w in work):
            vectors = pool(hidden, starts, self.pooling.modes)
        for i, w in enumerate(work):
            if w.params.task == "score":
                results.append(scores[i])
                continue
            v = vectors[i]
            if w.params.dimensions is not None:
                v = v[:w.params.dimensions]
            wants_norm = self.pooling.normalize if w.params.normalize is None else w.params.normalize
            results.append(normalize(v) if wants_norm else v)
        return results

    def _encode(self, work: list[PoolingWork]) -> tuple[np.ndarray, np.ndarray]:
        lengths = [len(w.token_ids) for w in work]
        starts = np.cumsum([0, *lengths])
        ids = np.concatenate([np.asarray(w.token_ids, np.int64) for w in work])
        types = np.concatenate([np.asarray(w.token_type_ids, np.int64) if w.token_type_ids
                                else np.zeros(len(w.token_ids), np.int64) for w in work])
        positions = np.concatenate([np.arange(n) for n in lengths])
        return bert.encode(self.weights, self.cfg, ids, positions, types, starts), starts

    def _decode(self, work: list[PoolingWork]) -> tuple[np.ndarray, np.ndarray]:
        """All of the step's texts in one causal pass, side by side, each attending to itself
        (`attention.whole_sequences`), with no KV cache to write or keep."""
        lengths = [len(w.token_ids) for w in work]
        starts = np.cumsum([0, *lengths])
        ids = np.concatenate([np.asarray(w.token_ids, np.int64) for w in work])
        positions = np.concatenate([np.arange(n) for n in lengths])
        # Last-token pooling reads one row of each text: only it goes through the final norm.
        last_only = self.pooling.modes == ("lasttoken",)
        rows = starts[1:] - 1 if last_only else None
        out = self.family.forward(self.weights, self.cfg, ids, positions, None,
                                  whole_sequences(starts), logit_rows=rows)
        if not last_only:
            return out, starts
        hidden = np.zeros((starts[-1], self.cfg.n_embd), np.float32)
        hidden[rows] = out
        return hidden, starts
