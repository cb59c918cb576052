"""What the web page's engine view costs the engine: a snapshot against a decode step.

Runs `batch` greedy requests (32-token prompts, EOS ignored) on random weights of the model's
shapes with the default KV pool, until their context reaches `--context`. It then times engine
steps and, in the same process and in turn, the snapshot the engine thread takes between two
steps when the page asks (`LLMEngine.snapshot`: block owners, reference counts, cached flags,
the queues, the recent steps). Medians of `--steps` of each; the ratio is what matters, since
both see the same machine. Turning the snapshot into JSON happens on the HTTP side, not on the
engine thread; it is timed too, for reference.

    python scripts/lab/snapshot_cost.py --batch 64
"""

from __future__ import annotations

import argparse
import json
import sys

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()  # before numpy loads: see model/platform/threads.py

# isort: split

from nanovllm.scripts.lab.profile_decode import (  # noqa: E402
    add_decode_args,
    alternating_medians_ms,
    decoding_engine,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decode_args(p)
    p.add_argument("--num-kv-blocks", type=int, default=None, help="default: a 1 GiB pool")
    args = p.parse_args(argv)
    engine = decoding_engine(args, num_kv_blocks=args.num_kv_blocks)
    step, snapshot = alternating_medians_ms([engine.step, engine.snapshot], args.steps)
    [to_json] = alternating_medians_ms([lambda: json.dumps(engine.snapshot().to_dict())],
                                       args.steps)
    print(f"batch {args.batch}, context ~{args.context}, {engine.num_kv_blocks} KV blocks: "
          f"step {step:.2f} ms, snapshot {1e3 * snapshot:.1f} us = "
          f"{100 * snapshot / step:.3f}% of a step (engine thread); snapshot and its JSON "
          f"{to_json:.2f} ms (HTTP side)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
