"""When a sequence is done, in vLLM's order: the context length always; nothing else before
min_tokens; then EOS (unless ignore_eos), a stop token id, a stop string, and max_tokens."""

from __future__ import annotations

from nanovllm.sequence import Sequence
from nanovllm.values.stop_strings import find_stop

Finish = tuple[str, int | str | None]  # (finish_reason, stop_reason)


def finish_on_token(seq: Sequence, token: int, eos_token_id: int, max_model_len: int) -> Finish | None:
    p = seq.params
    if seq.num_tokens >= max_model_len:
        return ("length", None)
    if seq.num_output_tokens < p.min_tokens:
        return None
    if token == eos_token_id and not p.ignore_eos:
        return ("stop", None)
    if token in p.stop_token_ids:
        return ("stop", token)
    if p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens:
        return ("length", None)
    return None


def finish_on_text(seq: Sequence, old_len: int) -> Finish | None:
    """Ends `seq` at the first stop string that ends in its new text (after `old_len`
    characters), trimming the text there."""
    p = seq.params
    if not p.stop or seq.num_output_tokens < p.min_tokens:
        return None
    hit = find_stop(seq.text, p.stop, old_len)
    if hit is None:
        return None
    index, stop = hit
    seq.text = seq.text[:index + (len(stop) if p.include_stop_str_in_output else 0)]
    return ("stop", stop)
