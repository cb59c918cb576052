"""Embeddings benchmark: texts/s and tokens/s of the engine's pooling path, side by side with
sentence-transformers (torch) on the same checkpoint, texts and threads, in the same process.

    nanovllm bench embeddings                               # all-MiniLM-L6-v2's shapes
    nanovllm bench embeddings --model bge-small-en-v1.5 --batch-sizes 1,8,32 --input-len 128
    nanovllm bench embeddings --model DIR --no-compare

Workload. A cell is B texts of L tokens each: random whole words of the model's vocabulary,
L - 2 of them, which its tokenizer turns into exactly L tokens with [CLS] and [SEP] (fresh words
every run). Both sides take the texts, tokenize them and return normalized vectors as the
checkpoint's pooling says.

nanovllm. `LLM.embed(texts)`: every text one request through the engine (its scheduler batches
them under the token budget), timed from the call to its return.
sentence-transformers. `SentenceTransformer(same dir).encode(texts, batch_size=B)`, fp32,
torch.set_num_threads set to numpy's BLAS thread count (--threads changes both).

Before each cell both sides run once untimed; then the runs alternate ours/theirs, --reps times
(so a busy machine slows both alike); the table shows the median and [min-max];
ratio = nanovllm / sentence-transformers (above 1: nanovllm is faster).

Against the machine's roof. Before the cells, OpenBLAS's float32 sgemm is timed on the same
threads (`roofs.measure_float32_peak`); each side's multiply-adds a second (texts/s times what a
text costs, counted from the model's config: `text_multiply_adds`, the linear layers and
attention's two products) are shown as a share of it. Neither side can pass it by much: the
share says how much is left to gain, whichever side is ahead.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split
import numpy as np  # noqa: E402

from nanovllm.scripts.bench_transformers import INSTALL_TORCH_CPU, load_torch_first  # noqa: E402
from nanovllm.scripts.bench_utils import (  # noqa: E402
    Summary,
    default_threads,
    describe_environment,
    environment,
    limit_blas_threads,
    parse_int_list,
    render_table,
    write_json,
)
from nanovllm.scripts.roofs import describe_float32, measure_float32_peak  # noqa: E402

INSTALL_REFERENCE = f"{INSTALL_TORCH_CPU} && pip install sentence-transformers"


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from nanovllm.config import add_engine_args

    parser.add_argument("--model", default="all-minilm-l6-v2",
                        help="checkpoint directory or hub name (default all-minilm-l6-v2; if the "
                             "hub is unreachable a preset falls back to random weights, which run "
                             "at the same speed)")
    parser.add_argument("--batch-sizes", type=parse_int_list, default=[1, 32], metavar="B,...",
                        help="texts per call (default 1,32)")
    parser.add_argument("--input-len", type=int, default=128,
                        help="tokens per text, [CLS] and [SEP] included (default 128)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per cell (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads for numpy and torch (default: numpy's current count)")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also run sentence-transformers (default: on)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write results as JSON to FILE (or stdout with no FILE)")
    parser.add_argument("--bench-seed", type=int, default=0, help="seed of the random texts")
    add_engine_args(parser)
    parser.set_defaults(allow_dummy_fallback=True)
    return parser


class Texts:
    """Random texts that the model's tokenizer makes exactly `length` tokens of."""

    def __init__(self, tokenizer, length: int, seed: int):
        vocab = ((tokenizer.vocab_token(i), i) for i in range(tokenizer.vocab_size))
        words = [w for w, i in vocab if w.isalpha() and w.isascii() and w.islower()
                 and tokenizer.encode_pair(w)[0][1:-1] == [i]]
        self.words, self.length, self.tokenizer = sorted(words), length, tokenizer
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> list[str]:
        texts = [" ".join(self.rng.choice(self.words, self.length - 2)) for _ in range(n)]
        assert all(len(self.tokenizer.encode_pair(t)[0]) == self.length for t in texts[:1])
        return texts


ROOF_COLUMN = "G multiply-adds/s (of roof)"


@dataclass(frozen=True, slots=True)
class Roof:
    """float32's roof on this machine and what one text costs: a side's texts/s as multiply-adds
    a second and as a share of the roof."""
    float32_multiply_adds_per_s: float
    multiply_adds_per_text: int
    counted: str = ("the linear layers and attention's two products (embeddings, norms, "
                    "activations and pooling are not counted)")

    def describe(self, input_len: int) -> str:
        return (f"roof (measured): {describe_float32(self.float32_multiply_adds_per_s)}; a text "
                f"of {input_len} tokens costs {self.multiply_adds_per_text / 1e9:.3f} G "
                f"multiply-adds: {self.counted}")

    def rate(self, texts_per_s: Summary) -> float:
        """Multiply-adds a second at the median texts/s."""
        return texts_per_s.median * self.multiply_adds_per_text

    def cell(self, side: str, texts_per_s: Summary | None) -> dict:
        """The JSON's `<side>_multiply_adds_per_s` and `<side>_of_roof`."""
        if texts_per_s is None:
            return {}
        rate = self.rate(texts_per_s)
        return {f"{side}_multiply_adds_per_s": rate,
                f"{side}_of_roof": rate / self.float32_multiply_adds_per_s}

    def fmt(self, texts_per_s: Summary | None) -> str:
        if texts_per_s is None:
            return "-"
        rate = self.rate(texts_per_s)
        return f"{rate / 1e9:.1f} ({rate / self.float32_multiply_adds_per_s:.0%})"


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    from nanovllm.config import EngineConfig
    from nanovllm.llm import LLM

    if args.compare and importlib.util.find_spec("sentence_transformers") is None:
        print("error: the comparison needs sentence-transformers (not installed); install the "
              f"CPU build: {INSTALL_REFERENCE}, or pass --no-compare", file=sys.stderr)
        return 2
    limits = limit_blas_threads(args.threads)  # noqa: F841 - the limit lasts while this lives
    threads = args.threads or default_threads()
    if args.compare:
        load_torch_first()
    config = EngineConfig.from_cli_args(args.model, args)
    try:
        llm = LLM(**{f: getattr(config, f) for f in config.__slots__})
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    engine = llm.engine
    pooling = engine.processor.pooling
    if pooling is None or pooling.is_cross_encoder:
        print(f"error: {args.model} is not an embedding model (an encoder, or a decoder with "
              "--runner pooling)", file=sys.stderr)
        return 2
    if args.input_len > engine.max_model_len:
        print(f"error: --input-len {args.input_len} is longer than the model's context "
              f"({engine.max_model_len})", file=sys.stderr)
        return 2
    theirs = None
    env = environment(threads)
    if args.compare:
        import sentence_transformers
        import torch
        import transformers

        torch.set_num_threads(threads)
        theirs = sentence_transformers.SentenceTransformer(str(engine.model_path), device="cpu")
        env.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   transformers=f"{transformers.__version__}, sentence-transformers "
                                f"{sentence_transformers.__version__}")
    out = sys.stderr if args.json == "-" else sys.stdout
    print(describe_environment(env), file=out)
    print(f"model: {engine.architecture} from {engine.model_path}"
          f"{' (RANDOM weights: same speed)' if engine.is_dummy else ''}; "
          f"{args.input_len} tokens a text", file=out, flush=True)
    roof = Roof(measure_float32_peak(), engine.model_config.text_multiply_adds(args.input_len))
    print(roof.describe(args.input_len), file=out, flush=True)
    source = Texts(engine.tokenizer, args.input_len, args.bench_seed)
    rows, results = [], []
    for b in args.batch_sizes:
        ours_s, theirs_s = [], []
        warm = source.batch(b)
        llm.embed(warm, use_tqdm=False)
        if theirs is not None:
            theirs.encode(warm, batch_size=b, show_progress_bar=False)
        for _ in range(args.reps):
            texts = source.batch(b)
            ours_s.append(timed(partial(llm.embed, texts, use_tqdm=False)))
            if theirs is not None:
                theirs_s.append(timed(partial(theirs.encode, texts, batch_size=b,
                                              show_progress_bar=False)))
        ours = Summary.of([b / s for s in ours_s])
        ref = Summary.of([b / s for s in theirs_s])
        ratio = Summary.of([t / o for o, t in zip(ours_s, theirs_s)])
        results.append({"batch": b, "input_len": args.input_len, "nanovllm_texts_per_s": ours,
                        "st_texts_per_s": ref, "ratio": ratio,
                        **roof.cell("nanovllm", ours), **roof.cell("st", ref)})
        rows.append([str(b), ours.fmt(1), f"{ours.median * args.input_len:,.0f}",
                     roof.fmt(ours), ref.fmt(1) if ref else "-",
                     f"{ref.median * args.input_len:,.0f}" if ref else "-", roof.fmt(ref),
                     ratio.fmt(2) if ratio else "-"])
        print(f"batch {b}: done", file=sys.stderr, flush=True)
    print(render_table([["batch", "nanovllm texts/s", "tokens/s", ROOF_COLUMN,
                         "sentence-transformers texts/s", "tokens/s", ROOF_COLUMN, "ratio"],
                        *rows]), file=out, flush=True)
    if args.json:
        write_json({"environment": env, "model": str(engine.model_path), "roof": asdict(roof),
                    "results": [{k: (asdict(v) if isinstance(v, Summary) else v)
                                 for k, v in r.items()} for r in results]}, args.json)
    return 0
