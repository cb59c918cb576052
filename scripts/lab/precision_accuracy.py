"""How far int8 and bfloat16 weights move GPT-2's next-token distributions from float32's.

    python -m nanovllm.scripts.lab.precision_accuracy --model gpt2 --sequences 4 --length 256

Both models read the same random token sequences (teacher forcing: every position of every
sequence is a prediction), through the engine's forward pass. The error budget comes from the weights alone. rho is the largest relative RMS error of a weight
matrix, ||W - W'|| / ||W||, measured after conversion (int8 rounds each element by at most half
its row's scale, bfloat16 by at most 2**-9 relative). A matmul's output then moves by about rho
of its size; the n = 4 * n_layer + 2 converted matrices on the way to a logit (four per block,
the embedding, the LM head) round independently, so their changes add in quadrature:
    sigma = sqrt(n) * rho * RMS(centred float32 logits)     (the predicted RMS logit change)
Per precision it prints, next to sigma:
- the measured RMS change of the centred logits (log-softmax: a shift changes nothing);
- greedy agreement over all positions, and over the positions that are not near-ties: float32's
  top two logits further apart than 12 sigma, which two changes within 6 sigma cannot swap;
- max |delta logprob| of float32's greedy token (at most twice the largest logit change), and
  the mean KL(float32 || other) (about half the p-weighted variance of the change, ~sigma**2 / 2).

A random checkpoint with GPT-2's initialisation (std 0.02) is used when `--model` is a preset.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

from nanovllm.model.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/threads.py

# isort: split
import numpy as np  # noqa: E402

PRECISIONS = {"int8": dict(quantization="int8"), "bfloat16": dict(dtype="bfloat16")}


@dataclass(slots=True)
class Agreement:
    positions: int
    weight_error: float            # rho
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


def compare(ref: np.ndarray, other: np.ndarray, rho: float, n_converted: int) -> Agreement:
    """Logits [positions, vocab] of float32 (`ref`) and of another precision whose weights are
    off by `rho` (relative RMS) in each of the `n_converted` matrices on a logit's path."""
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
        positions=len(ref), weight_error=rho, sigma=sigma,
        rms_logit_change=float(np.sqrt((change ** 2).mean())),
        greedy_agreement=float(agree.mean()), decided_positions=int(decided.sum()),
        decided_agreement=float(agree[decided].mean()) if decided.any() else float("nan"),
        max_delta_logprob=float(np.abs(ref_lp[rows, greedy] - other_lp[rows, greedy]).max()),
        mean_kl=float((np.exp(ref_lp) * (ref_lp - other_lp)).sum(-1).mean()))


def weight_error(plain, converted) -> float:
    """rho: the largest ||W - W'|| / ||W|| over the weight matrices and the embedding."""
    from nanovllm.model.quant import dequantize

    pairs = [(plain.wte, converted.wte)]
    for a, b in zip(plain.blocks, converted.blocks):
        pairs += [(a.attn_w, b.attn_w), (a.attn_proj_w, b.attn_proj_w), (a.fc_w, b.fc_w),
                  (a.fc_proj_w, b.fc_proj_w)]
    return max(float(np.linalg.norm(w - dequantize(c)) / np.linalg.norm(w)) for w, c in pairs)


def teacher_forced_logits(weights, cfg, sequences: np.ndarray) -> np.ndarray:
    """Logits at every position of each sequence [n, T] (the engine's plain forward pass)."""
    from nanovllm.model.gpt2 import forward

    return np.concatenate([forward(weights, cfg, seq, np.arange(len(seq))) for seq in sequences])


def measure(cfg, tensors: dict, sequences: np.ndarray) -> dict[str, Agreement]:
    """Agreement of each precision with float32, for checkpoint tensors (un-prefixed HF names)."""
    from nanovllm.model.checkpoint.loader import build_weights

    plain = build_weights(cfg, dict(tensors))
    ref = teacher_forced_logits(plain, cfg, sequences)
    results = {}
    for name, options in PRECISIONS.items():
        converted = build_weights(cfg, dict(tensors), **options)
        logits = teacher_forced_logits(converted, cfg, sequences)
        results[name] = compare(ref, logits, weight_error(plain, converted), 4 * cfg.n_layer + 2)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", default="gpt2", help="preset (random weights) or checkpoint dir")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from pathlib import Path

    from nanovllm.model import PRESETS
    from nanovllm.model.checkpoint.dummy import random_weights
    from nanovllm.model.checkpoint.loader import read_tensors
    from nanovllm.model.config import GPT2Config

    if args.model in PRESETS:
        cfg = PRESETS[args.model]
        tensors = random_weights(cfg, args.seed)
    else:
        cfg = GPT2Config.from_json(Path(args.model) / "config.json")
        tensors = read_tensors(Path(args.model))[0]
        tensors.pop("lm_head.weight", None)
    rng = np.random.default_rng(args.seed)
    sequences = rng.integers(0, cfg.vocab_size - 1, (args.sequences, args.length))
    for name, result in measure(cfg, tensors, sequences).items():
        print(name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in asdict(result).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
