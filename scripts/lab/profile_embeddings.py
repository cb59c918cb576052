"""Where an encoder layer's time goes, piece by piece, against torch's same pieces.

One layer of a BERT checkpoint (random weights), over `--texts` texts of `--input-len` tokens:
the fused QKV projection, attention, the output projection with its residual add, layer norm,
the MLP's up projection with GELU, its down projection with the residual add; ours
(`model/architectures/bert.py`'s calls) and torch's (`F.linear`, `F.scaled_dot_product_attention`,
`F.layer_norm`, `F.gelu`, as transformers' BertLayer makes them) on the same weights and
inputs. Both sides run on one thread (numba, numpy's BLAS, torch) and are timed in the thread's
CPU time, best of `--reps`: what each side's arithmetic costs, whatever else the machine runs.
`nanovllm bench embeddings` measures the whole path, on all cores.

    python scripts/lab/profile_embeddings.py --texts 32
"""

from __future__ import annotations

import argparse
import sys
import time

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402


def best_cpu_ms(fn, reps: int) -> float:
    """The least thread CPU time of `reps` calls (after one untimed), in ms."""
    fn()
    spent = []
    for _ in range(reps):
        start = time.thread_time()
        fn()
        spent.append(time.thread_time() - start)
    return min(spent) * 1e3


def pieces(lw, cfg, x: np.ndarray, starts: np.ndarray):
    """(name, ours, torch's) for each piece of one layer, on its inputs."""
    import torch
    import torch.nn.functional as F

    from nanovllm.model.layers.activations import gelu_erf_
    from nanovllm.model.layers.encoder_attention import encoder_attention
    from nanovllm.model.layers.linear import linear
    from nanovllm.model.layers.norms import layer_norm
    from nanovllm.model.weights.quant import kernel_array

    n, e = x.shape
    heads, texts, t = cfg.num_attention_heads, len(starts) - 1, n // (len(starts) - 1)
    tt = {name: torch.from_numpy(np.array(kernel_array(getattr(lw, name))))  # (a copy: writable)
          for name in ("qkv_w", "qkv_b", "o_w", "o_b", "up_w", "up_b", "down_w", "down_b",
                       "attn_norm_g", "attn_norm_b")}
    qkv = linear(x, lw.qkv_w, lw.qkv_b)
    heads_out = encoder_attention(qkv, heads, starts)
    h = linear(x, lw.up_w, lw.up_b)
    tx, th, t_heads = torch.from_numpy(x), torch.from_numpy(h), torch.from_numpy(heads_out)
    q, k, v = (torch.from_numpy(qkv).view(texts, t, 3, heads, e // heads)[:, :, i].transpose(1, 2)
               for i in range(3))
    eps = cfg.layer_norm_eps
    return [
        ("QKV projection", lambda: linear(x, lw.qkv_w, lw.qkv_b),
         lambda: F.linear(tx, tt["qkv_w"], tt["qkv_b"])),
        ("attention", lambda: encoder_attention(qkv, heads, starts),
         lambda: F.scaled_dot_product_attention(q, k, v)),
        ("output projection + residual", lambda: linear(heads_out, lw.o_w, lw.o_b, x.copy()),
         lambda: F.linear(t_heads, tt["o_w"], tt["o_b"]) + tx),
        ("layer norm", lambda: layer_norm(x, lw.attn_norm_g, lw.attn_norm_b, eps),
         lambda: F.layer_norm(tx, (e,), tt["attn_norm_g"], tt["attn_norm_b"], eps)),
        ("up projection + GELU", lambda: gelu_erf_(linear(x, lw.up_w), lw.up_b),
         lambda: F.gelu(F.linear(tx, tt["up_w"], tt["up_b"]))),
        ("down projection + residual", lambda: linear(h, lw.down_w, lw.down_b, x.copy()),
         lambda: F.linear(th, tt["down_w"], tt["down_b"]) + tx),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-minilm-l6-v2",
                   help="BERT preset (random weights) or checkpoint")
    p.add_argument("--texts", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: the comparison needs torch (CPU build)", file=sys.stderr)
        return 2
    import numba
    from threadpoolctl import threadpool_limits

    from nanovllm import LLMEngine
    from nanovllm.config import EngineConfig
    from nanovllm.model.architectures.bert_config import BertConfig

    engine = LLMEngine(EngineConfig(args.model, load_format="dummy"))
    cfg, weights = engine.runner.cfg, engine.runner.weights
    if not isinstance(cfg, BertConfig):
        print(f"error: {args.model} is not a BERT encoder", file=sys.stderr)
        return 2
    n = args.texts * args.input_len
    x = np.random.default_rng(0).standard_normal((n, cfg.hidden_size)).astype(np.float32)
    starts = np.arange(0, n + 1, args.input_len)
    threads = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, "blas"), torch.inference_mode():
            rows = [(name, best_cpu_ms(ours, args.reps), best_cpu_ms(theirs, args.reps))
                    for name, ours, theirs in pieces(weights.layers[0], cfg, x, starts)]
    finally:  # (a caller in the same process keeps its threads)
        numba.set_num_threads(threads[0])
        torch.set_num_threads(threads[1])
    print(f"{args.model}: one layer, {args.texts} texts x {args.input_len} tokens; one thread "
          f"each side, thread CPU time, best of {args.reps}")
    print(f"{'piece':<30} {'nanovllm ms':>12} {'torch ms':>10} {'torch / ours':>13}")
    for name, ours, theirs in rows:
        print(f"{name:<30} {ours:>12.3f} {theirs:>10.3f} {theirs / ours:>13.2f}")
    ours, theirs = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'layer':<30} {ours:>12.3f} {theirs:>10.3f} {theirs / ours:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
