"""How far int8 and bfloat16 weights move a model's next-token distributions from float32's.

    python -m nanovllm.scripts.lab.precision_accuracy --model gpt2 --sequences 4 --length 256
    python -m nanovllm.scripts.lab.precision_accuracy --model smollm2-135m --sequences 2
    python -m nanovllm.scripts.lab.precision_accuracy --model ../shared/models/code-6l --text FILE

Both models read the same token sequences (random ids, or with --text consecutive windows of a
text file through the checkpoint's tokenizer; teacher forcing: every position of every sequence
is a prediction), through the engine's forward pass. The error budget comes from the measured
rounding. rho_w is the largest relative RMS error of a weight matrix, ||W - W'|| / ||W||,
measured after conversion (int8 rounds each element by at most half its row's scale, bfloat16 by
at most 2**-9 relative). int8 is W8A8: each linear layer's input is rounded per token too, and
rho_x is the largest relative RMS error that rounding gives the inputs of the float32 model's
linear layers (measured on the same sequences through `model/architectures/gpt2_reference.py`); rho
is sqrt(rho_w**2 + rho_x**2) then. bfloat16 runs as the engine would on this CPU: on the
avx512bf16 kernel, whose inputs are rounded to bfloat16 (rho_x measured the same way), where the
CPU has AVX512_BF16 (prefill attention's inputs are rounded there too, not counted in sigma),
else widened to float32 products (rho_x = 0). A matmul's output moves by
about rho of its size; the n converted matrices on the way to a logit round independently, so
their changes add in quadrature. n = 4 * n_layer + 2 for GPT-2 (four per block, the embedding, the LM head)
and 5 * n_layer + 2 for the Llama family (its MLP multiplies two projections, gate and up):
    sigma = sqrt(n) * rho * RMS(centred float32 logits)     (the predicted RMS logit change)
Per precision it prints, next to sigma:
- the measured RMS change of the centred logits (log-softmax: a shift changes nothing);
- greedy agreement over all positions, and over the positions that are not near-ties: float32's
  top two logits further apart than 12 sigma, which two changes within 6 sigma cannot swap;
- max |delta logprob| of float32's greedy token (at most twice the largest logit change), and
  the mean KL(float32 || other) (about half the p-weighted variance of the change, ~sigma**2 / 2).

A random checkpoint with transformers' initialisation (std 0.02) is used when `--model` is a
preset (GPT-2's or the Llama family's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402

PRECISIONS = {"int8": dict(quantization="int8"), "bfloat16": dict(dtype="bfloat16")}


@dataclass(slots=True)
class Agreement:
    positions: int
    weight_error: float            # rho_w
    activation_error: float        # rho_x (0 where the activations stay float32)
    sigma: float                   # predicted RMS change of the centred logits
    rms_logit_change: float        # measured
    greedy_agreement: float        # over all positions
    decided_positions: int         # float32's top two more than 12 sigma apart
    decided_agreement: float       # over those
    max_delta_logprob: float       # of float32's greedy token
    mean_kl: float                 # KL(float32 || other), nats


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def compare(ref: np.ndarray, other: np.ndarray, rho_w: float, rho_x: float,
            n_converted: int) -> Agreement:
    """Logits [positions, vocab] of float32 (`ref`) and of another precision whose weights are
    off by `rho_w` (relative RMS), and the inputs by `rho_x`, in each of the `n_converted`
    matrix products on a logit's path."""
    rho = float(np.hypot(rho_w, rho_x))
    ref_lp, other_lp = log_softmax(ref), log_softmax(other)
    centred = ref_lp - ref_lp.mean(-1, keepdims=True)
    change = other_lp - ref_lp
    change -= change.mean(-1, keepdims=True)
    sigma = float(np.sqrt(n_converted) * rho * np.sqrt((centred ** 2).mean()))
    greedy, rows = ref.argmax(-1), np.arange(len(ref))
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 12 * sigma
    agree = other.argmax(-1) == greedy
    return Agreement(
        positions=len(ref), weight_error=rho_w, activation_error=rho_x, sigma=sigma,
        rms_logit_change=float(np.sqrt((change ** 2).mean())),
        greedy_agreement=float(agree.mean()), decided_positions=int(decided.sum()),
        decided_agreement=float(agree[decided].mean()) if decided.any() else float("nan"),
        max_delta_logprob=float(np.abs(ref_lp[rows, greedy] - other_lp[rows, greedy]).max()),
        mean_kl=float((np.exp(ref_lp) * (ref_lp - other_lp)).sum(-1).mean()))


def converted_pairs(plain, converted) -> list[tuple[np.ndarray, object]]:
    """(float32 matrix, its int8 or bfloat16 form) for every matrix either model converts,
    found by walking the two weight dataclasses side by side."""
    from dataclasses import fields, is_dataclass

    from nanovllm.model.weights.quant import BF16Weight, Int8Weight

    if isinstance(converted, Int8Weight | BF16Weight):
        return [(plain, converted)]
    if isinstance(plain, list):
        return [p for a, b in zip(plain, converted) for p in converted_pairs(a, b)]
    if is_dataclass(plain):
        return [p for f in fields(plain)
                for p in converted_pairs(getattr(plain, f.name), getattr(converted, f.name))]
    return []


def weight_error(plain, converted) -> float:
    """rho: the largest ||W - W'|| / ||W|| over the weight matrices and the embedding."""
    from nanovllm.model.weights.quant import dequantize

    return max(float(np.linalg.norm(w - dequantize(c)) / np.linalg.norm(w))
               for w, c in converted_pairs(plain, converted))


def gpt2_linear_inputs(plain, cfg, seq: np.ndarray) -> Iterator[np.ndarray]:
    """The inputs of GPT-2's linear layers (and its LM head) on one sequence, float32 model."""
    from nanovllm.model.architectures import gpt2_reference as ref

    eps = cfg.layer_norm_epsilon
    x = ref.embed(plain, cfg, seq)
    for blk in plain.blocks:
        a = ref.layer_norm(x, blk.ln_1_g, blk.ln_1_b, eps)
        heads = ref.attention(*ref.qkv_heads(a, blk, cfg.n_head)).reshape(x.shape)
        x = x + ref.linear(heads, blk.attn_proj_w, blk.attn_proj_b)
        m = ref.layer_norm(x, blk.ln_2_g, blk.ln_2_b, eps)
        h = ref.gelu(ref.linear(m, blk.fc_w, blk.fc_b))
        x = x + ref.linear(h, blk.fc_proj_w, blk.fc_proj_b)
        yield from (a, heads, m, h)
    yield ref.layer_norm(x, plain.ln_f_g, plain.ln_f_b, eps)


def llama_linear_inputs(plain, cfg, seq: np.ndarray) -> Iterator[np.ndarray]:
    """The same for the Llama family (model/architectures/llama_reference.py's block, step by
    step)."""
    from nanovllm.model.architectures import llama_reference as ref

    eps, positions = cfg.rms_norm_eps, np.arange(len(seq))
    x = ref.embed(plain, cfg, seq)
    for layer in plain.layers:
        a = ref.rms_norm(x, layer.input_norm, eps)
        heads = ref.attention(*ref.qkv_heads(a, layer, cfg, positions),
                              window=cfg.sliding_window).reshape(len(x), -1)
        x = x + ref.linear(heads, layer.o_w, layer.o_b)
        m = ref.rms_norm(x, layer.post_norm, eps)
        gate_w, up_w = np.split(layer.gate_up_w, 2)
        h = ref.silu(ref.linear(m, gate_w)) * ref.linear(m, up_w)
        x = x + ref.linear(h, layer.down_w)
        yield from (a, heads, m, h)
    yield ref.rms_norm(x, plain.norm, eps)


def activation_error(plain, cfg, sequences: np.ndarray, rounded) -> float:
    """rho_x: the largest ||x - x'|| / ||x|| over the inputs x of the float32 model's linear
    layers (and its LM head), x' = rounded(x) as the kernel rounds them (`rounding`)."""
    from nanovllm.model.architectures.gpt2_config import GPT2Config

    inputs = gpt2_linear_inputs if isinstance(cfg, GPT2Config) else llama_linear_inputs
    worst = 0.0
    for seq in sequences:
        for x in inputs(plain, cfg, seq):
            x = np.ascontiguousarray(x, np.float32)
            norm = np.linalg.norm(x)
            if norm > 0:
                worst = max(worst, float(np.linalg.norm(x - rounded(x)) / norm))
    return worst


def rounding(options: dict):
    """How the kernels of a precision round a linear layer's input on this CPU, or None: int8
    per row (W8A8), bfloat16 each element where it runs on the avx512bf16 kernel."""
    from nanovllm.model.layers.linear import host_packs_bfloat16
    from nanovllm.model.weights.quant import dequantize, quantize_int8, round_to_bfloat16

    if options.get("quantization") == "int8":
        return lambda x: dequantize(quantize_int8(x))
    if options.get("dtype") == "bfloat16" and host_packs_bfloat16():
        return round_to_bfloat16
    return None


def teacher_forced_logits(weights, cfg, sequences: np.ndarray) -> np.ndarray:
    """Logits at every position of each sequence [n, T] (the engine's plain forward pass)."""
    from nanovllm.model.architectures.registry import family_of

    forward = family_of(cfg).forward
    return np.concatenate([forward(weights, cfg, seq, np.arange(len(seq))) for seq in sequences])


def converted_on_the_path(cfg) -> int:
    """How many converted matrices a logit's value goes through (see the module's doc)."""
    from nanovllm.model.architectures.gpt2_config import GPT2Config

    return (4 if isinstance(cfg, GPT2Config) else 5) * cfg.n_layer + 2


def measure(cfg, tensors: dict, sequences: np.ndarray) -> dict[str, Agreement]:
    """Agreement of each precision with float32, for checkpoint tensors (un-prefixed HF names)
    of any architecture."""
    from functools import partial

    from nanovllm.model.architectures.registry import family_of
    from nanovllm.model.checkpoint.loader import build_weights
    from nanovllm.model_loading import pack_for_kernels

    build_weights = partial(build_weights, family_of(cfg))
    plain = build_weights(cfg, dict(tensors))
    ref = teacher_forced_logits(plain, cfg, sequences)
    results = {}
    for name, options in PRECISIONS.items():
        converted = build_weights(cfg, dict(tensors), **options)
        rho_w = weight_error(plain, converted)
        pack_for_kernels(converted, options.get("dtype", "auto"))  # (the engine's kernels)
        logits = teacher_forced_logits(converted, cfg, sequences)
        rounded = rounding(options)
        rho_x = activation_error(plain, cfg, sequences, rounded) if rounded else 0.0
        results[name] = compare(ref, logits, rho_w, rho_x, converted_on_the_path(cfg))
    return results


def text_windows(model_dir, text: str, sequences: int, length: int) -> np.ndarray:
    """`sequences` consecutive windows of `length` tokens of `text`, through the checkpoint's
    tokenizer.json."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text).ids
    if len(ids) < sequences * length:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {sequences} x {length}")
    return np.array(ids[:sequences * length]).reshape(sequences, length)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="gpt2",
                   help="preset of any architecture (random weights) or GPT-2 checkpoint dir")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", default=None, metavar="FILE",
                   help="read windows of this text file (checkpoint directories only) instead of "
                        "random token ids")
    args = p.parse_args(argv)

    from pathlib import Path

    from nanovllm.model import PRESETS
    from nanovllm.model.architectures.gpt2_config import GPT2Config
    from nanovllm.model.architectures.llama_config import LLAMA_PRESETS
    from nanovllm.model.checkpoint.dummy import random_weights
    from nanovllm.model.checkpoint.loader import read_tensors

    presets = {**PRESETS, **LLAMA_PRESETS}
    if args.model in presets:
        cfg = presets[args.model]
        tensors = random_weights(cfg, args.seed)
    else:  # a GPT-2 checkpoint directory
        cfg = GPT2Config.from_json(Path(args.model) / "config.json")
        tensors = read_tensors(Path(args.model))[0]
        tensors.pop("lm_head.weight", None)
    if args.text:
        sequences = text_windows(Path(args.model), Path(args.text).read_text(), args.sequences,
                                 args.length)
    else:
        rng = np.random.default_rng(args.seed)
        sequences = rng.integers(0, cfg.vocab_size - 1, (args.sequences, args.length))
    for name, result in measure(cfg, tensors, sequences).items():
        print(name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in asdict(result).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
