"""How much of a prefill is not weight GEMMs, float32 and int8 (W8A8) side by side.

Two engines (random weights, float32 and `--quantization int8`) each prefill one prompt of
`--length` tokens (one new token, prefix caching off), and in the same process the bare chain
of weight matmuls that prefill must do: the four per layer over every prompt row, and the LM
head over one row (a prefill's logits are the last position's). The difference is attention,
layer norm, GELU, embedding, sampling and scheduling. Prefills and chains alternate, so that
all four see the same machine speed; medians of `--reps` of each.

    python scripts/lab/profile_prefill.py --length 512
"""

from __future__ import annotations

import argparse
import sys

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402

from nanovllm.scripts.lab.profile_decode import alternating_medians_ms  # noqa: E402


def prefill_chain(weights, rows: int):
    """GPT-2's weight matmuls in a prefill of `rows` tokens: four per block, the LM head once."""
    from nanovllm.model.layers.linear import linear

    mats = [m for b in weights.blocks for m in (b.attn_w, b.attn_proj_w, b.fc_w, b.fc_proj_w)]
    inputs = {m.shape[1]: np.ones((rows, m.shape[1]), np.float32) for m in mats}
    last = np.ones((1, weights.wte.shape[1]), np.float32)

    def run():
        for m in mats:
            linear(inputs[m.shape[1]], m)
        linear(last, weights.wte)
    return run


def prefill_once(engine, length: int):
    """A function that prefills one new random prompt of `length` tokens to its first token."""
    from nanovllm import SamplingParams

    rng = np.random.default_rng(0)
    count = [0]

    def run():
        count[0] += 1
        prompt = rng.integers(0, engine.model_config.vocab_size - 1, length).tolist()
        engine.add_request(f"p{count[0]}", prompt,
                           SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
    return run


def main(argv: list[str] | None = None) -> int:
    from nanovllm import EngineConfig, LLMEngine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2", help="GPT-2 preset (random weights) or checkpoint")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    names, fns = [], []
    for quantization in (None, "int8"):
        engine = LLMEngine(EngineConfig(args.model, load_format="dummy", quantization=quantization,
                                        enable_prefix_caching=False))
        name = quantization or "float32"
        names += [f"{name} prefill", f"{name} GEMMs"]
        fns += [prefill_once(engine, args.length), prefill_chain(engine.runner.weights, args.length)]
    for fn in fns:  # warm-up: compiles, first touches
        fn()
    ms = dict(zip(names, alternating_medians_ms(fns, args.reps)))
    for name in ("float32", "int8"):
        step, gemm = ms[f"{name} prefill"], ms[f"{name} GEMMs"]
        print(f"{name:>7}: prefill {args.length} in {step:.1f} ms ({args.length / step * 1e3:.0f} "
              f"tok/s); weight GEMMs alone {gemm:.1f} ms; everything else {step - gemm:.1f} ms = "
              f"{100 * (1 - gemm / step):.0f}% of the prefill")
    print(f"int8 / float32: prefill {ms['float32 prefill'] / ms['int8 prefill']:.2f}x, weight "
          f"GEMMs alone {ms['float32 GEMMs'] / ms['int8 GEMMs']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
