"""The pictures of docs/tour.md, drawn from a running engine rather than by hand.

A tiny GPT-2 with random weights (2 layers, GPT-2's real vocabulary) runs on a deliberately
small engine: 4-token KV blocks and a 16-token step budget, so that a few short prompts show
chunked prefill, continuous batching, a prefix-cache hit and a preemption. The script watches
what the scheduler hands the model runner each step (the runner's own input, `SchedulerOutput`)
and writes each picture into the tour between `<!-- picture:NAME -->` and `<!-- /picture -->`.

    python -m nanovllm.scripts.lab.tour_pictures            # rewrite the pictures in docs/tour.md
    python -m nanovllm.scripts.lab.tour_pictures --check    # exit 1 if they are out of date

Generated tokens are drawn as `*`: only the prompts' tokens are shown as text, so the pictures
do not depend on what random weights happen to pick.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nanovllm.config import EngineConfig
from nanovllm.contract.step import ModelRunnerOutput, ScheduledSequence, SchedulerOutput
from nanovllm.engine import LLMEngine
from nanovllm.model import write_dummy_checkpoint
from nanovllm.values.beam_search_params import BeamSearchParams
from nanovllm.values.sampling_params import SamplingParams

TOUR = Path(__file__).resolve().parents[2] / "docs" / "tour.md"
TINY_MODEL = dict(n_layer=2, n_embd=64, n_head=4, n_positions=128)
BLOCK_SIZE = 4
STEP_BUDGET = 16
PICTURE = re.compile(r"(<!-- picture:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /picture -->)", re.S)


@dataclass(slots=True)
class Scheduled:
    """One sequence's share of a step, as the runner received it."""
    name: str
    start: int                # first position computed
    count: int                # positions computed
    block_table: list[int]    # a copy: the scheduler's list keeps changing
    sampled: bool             # whether the step samples a token for it
    num_cached: int           # prompt tokens it found in the prefix cache


@dataclass(slots=True)
class Step:
    number: int
    scheduled: list[Scheduled]
    num_free_blocks: int
    preempted: list[str]
    waiting: list[str]
    copies: list[tuple[int, int]]   # (source, destination) blocks copied on write first
    tables: dict[str, list[int]]    # every unfinished sequence's block table after the step


class Watched:
    """An engine whose every step is recorded, with each request's sequence named by its id."""

    def __init__(self, ckpt: Path, num_kv_blocks: int):
        self.engine = LLMEngine(EngineConfig(
            str(ckpt), block_size=BLOCK_SIZE, max_num_batched_tokens=STEP_BUDGET,
            num_kv_blocks=num_kv_blocks, max_num_seqs=8, seed=0))
        self.names: dict[int, str] = {}
        self.steps: list[Step] = []
        self._given: list[tuple[ScheduledSequence, list[int]]] = []
        self._copies: list[tuple[int, int]] = []
        run = self.engine.runner.run

        def recording_run(step: SchedulerOutput) -> ModelRunnerOutput:
            self._given = [(e, list(e.block_table)) for e in step.scheduled]
            self._copies = list(step.blocks_to_copy)
            return run(step)
        self.engine.runner.run = recording_run

    def add(self, name: str, prompt: str, max_tokens: int) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        self.engine.add_request(name, prompt, params)
        self.names[self.engine.requests[name].seqs[0].seq_id] = name

    def add_beam_search(self, name: str, prompt: str, width: int, max_tokens: int) -> None:
        """A beam search; its beams are named NAME0, NAME1, ... by their index."""
        params = BeamSearchParams(width, max_tokens, ignore_eos=True)
        self.engine.add(self.engine.processor.process_beam(name, prompt, params))
        self.names[self.engine.requests[name].seqs[0].seq_id] = f"{name}0"

    def step(self) -> Step:
        sched = self.engine.scheduler
        seqs = {s.seq_id: s for r in self.engine.requests.values() for s in r.seqs}
        preemptions = sched.num_preemptions
        self.engine.step()
        for request_id, request in self.engine.requests.items():  # beams forked in the step
            for seq in request.seqs:
                self.names.setdefault(seq.seq_id, f"{request_id}{seq.index}")
        preempted = [self.names[s.seq_id] for s in sched.waiting
                     if s.seq_id in seqs and s.num_output_tokens > 0]
        step = Step(len(self.steps) + 1, [
            Scheduled(self.names[e.seq_id], e.start, len(e.token_ids), table, e.sample,
                      seqs[e.seq_id].num_cached_tokens)
            for e, table in self._given],
            self.engine.block_manager.num_free_blocks,
            preempted if sched.num_preemptions > preemptions else [],
            [self.names[s.seq_id] for s in sched.waiting], self._copies,
            {self.names[s.seq_id]: list(s.block_table)
             for r in self.engine.requests.values() for s in r.seqs})
        self.steps.append(step)
        return step


def kind(s: Scheduled, prompt_len: int) -> str:
    if s.start >= prompt_len:
        return "decode"
    end = s.start + s.count
    if s.start and s.start == s.num_cached:
        return f"prefill {s.start}..{end - 1}, 0..{s.start - 1} cached"
    what = "prefill" if s.start == 0 and end == prompt_len else "prefill chunk"
    return f"{what} {s.start}..{end - 1} of {prompt_len}"


def steps_picture(w: Watched, steps: list[Step], prompt_lens: dict[str, int]) -> str:
    lines = []
    for step in steps:
        rows, layout = [], []
        # The runner lays decodes out first, then the prefill chunks (runner.prepare).
        ordered = sorted(step.scheduled, key=lambda s: s.count > 1)
        for s in ordered:
            rows.append(f"    {s.name}  {kind(s, prompt_lens[s.name]):<28} positions "
                        f"{s.start:>2}..{s.start + s.count - 1:<2} blocks {s.block_table}"
                        f"{'  -> samples a token' if s.sampled else ''}")
            layout.append(f"{s.name}" * min(s.count, 16))
        total = sum(s.count for s in step.scheduled)
        lines.append(f"step {step.number}: {total:>2} of {STEP_BUDGET} tokens  "
                     f"rows [{'|'.join(layout)}]")
        lines += rows
    return "\n".join(lines)


def slots_picture(w: Watched, step: Step) -> str:
    lines = []
    for s in step.scheduled:
        slots = [s.block_table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
                 for p in range(s.start, s.start + s.count)]
        lines.append(f"{s.name}: block table {s.block_table}")
        lines.append(f"   positions {s.start}..{s.start + s.count - 1} -> slots {slots}")
        lines.append(f"   (slot = block_table[position // {BLOCK_SIZE}] * {BLOCK_SIZE} "
                     f"+ position % {BLOCK_SIZE})")
    return "\n".join(lines)


def token_text(w: Watched, seq, position: int) -> str:
    if position >= seq.num_prompt_tokens:
        return "*"
    return repr(w.engine.tokenizer.decode_token(seq.token_ids[position]))[1:-1]


def pool_picture(w: Watched) -> str:
    """Every block of the pool: who holds it, its reference count, whether it is in the cache."""
    bm = w.engine.block_manager
    holders: dict[int, list[str]] = {}
    contents: dict[int, str] = {}
    seqs = [s for r in w.engine.requests.values() for s in r.seqs]
    for seq in seqs:
        for i, block_id in enumerate(seq.block_table):
            holders.setdefault(block_id, []).append(f"{w.names[seq.seq_id]}[{i}]")
            filled = range(i * BLOCK_SIZE, min((i + 1) * BLOCK_SIZE, seq.num_tokens))
            contents[block_id] = "|".join(token_text(w, seq, p) for p in filled)
    lines = ["block  refs  cached  held by        tokens"]
    for block in bm.blocks:
        if block.ref_count == 0 and block.hash is None:
            continue
        cached = "yes" if bm.hash_to_block_id.get(block.hash) == block.block_id else "-"
        text = contents.get(block.block_id, "(free, still findable by its hash)")
        lines.append(f"{block.block_id:>5}  {block.ref_count:>4}  {cached:<6}  "
                     f"{', '.join(holders.get(block.block_id, [])) or '-':<13}  {text}")
    lines.append(f"free blocks: {bm.num_free_blocks} of {bm.num_blocks}; "
                 "blocks never used are not shown")
    return "\n".join(lines)


def preemption_picture(steps: list[Step]) -> str:
    """Per step: each scheduled sequence's positions and block table, the pool's free blocks
    after the step, and the sequences sent back to wait."""
    lines = ["step  sequence: positions computed [block table]           free  waiting"]
    for step in steps:
        work = "  ".join(f"{s.name}: {s.start}..{s.start + s.count - 1} {s.block_table}"
                         for s in step.scheduled)
        cached = [f"{s.name} found {s.num_cached} tokens in the prefix cache"
                  for s in step.scheduled if s.start and s.start == s.num_cached]
        notes = [f"preempted {', '.join(step.preempted)}"] if step.preempted else []
        lines.append(f"{step.number:>4}  {work:<48} {step.num_free_blocks:>4}  "
                     f"{' '.join(step.waiting) or '-'}")
        lines += [f"      ({note})" for note in notes + cached]
    return "\n".join(lines)


def beams_picture(w: Watched) -> str:
    """Per step: the copies made before it (copy on write), what each beam computed in which
    blocks, and the beams' tables once the beam rule has picked the next beams (each a fork of
    its parent), with the blocks they share."""
    lines = []
    for step in w.steps:
        copies = ", ".join(f"{src} -> {dst}" for src, dst in step.copies) or "none"
        lines.append(f"step {step.number}: copied on write first: {copies}")
        lines += [f"    {s.name} computes positions {s.start}..{s.start + s.count - 1} in "
                  f"blocks {s.block_table}" for s in step.scheduled]
        if not step.tables:
            lines.append("    the search ends: its best beams are the answer, every block freed")
            continue
        refs: dict[int, int] = {}
        for table in step.tables.values():
            for block_id in table:
                refs[block_id] = refs.get(block_id, 0) + 1
        shared = ", ".join(f"{b} ({n} beams)" for b, n in sorted(refs.items()) if n > 1)
        tables = "  ".join(f"{name} {table}" for name, table in step.tables.items())
        lines.append(f"    next beams: {tables}")
        lines.append(f"    shared: {shared or 'none'}")
    return "\n".join(lines)


def beams_scenario(ckpt: Path) -> dict[str, str]:
    """A beam search of width 3: the beams fork from the prompt's sequence, share its blocks,
    and copy the partly filled block the first time each writes into it."""
    w = Watched(ckpt, num_kv_blocks=16)
    w.add_beam_search("K", "The capital of France is", width=3, max_tokens=4)
    while w.engine.has_unfinished_requests():
        w.step()
    return {"beams": beams_picture(w)}


def batching_scenario(ckpt: Path) -> dict[str, str]:
    """A long prompt prefilled in chunks, a short one joining, then a prompt sharing A's prefix."""
    w = Watched(ckpt, num_kv_blocks=24)
    prompts = {"A": "The capital of France is Paris. The capital of Germany is Berlin. "
                    "The capital of Italy is",
               "B": "Once upon a time",
               "C": "The capital of France is Paris. The capital of Spain is"}
    lens = {k: len(w.engine.tokenizer.encode(v)) for k, v in prompts.items()}
    w.add("A", prompts["A"], max_tokens=4)
    w.step()
    w.add("B", prompts["B"], max_tokens=4)
    second = w.step()
    w.step()
    w.add("C", prompts["C"], max_tokens=2)
    w.step()
    pool = pool_picture(w)
    while w.engine.has_unfinished_requests():
        w.step()
    return {"steps": steps_picture(w, w.steps, lens), "slots": slots_picture(w, second),
            "prefix_hit": pool}


def preemption_scenario(ckpt: Path) -> dict[str, str]:
    """Three sequences that outgrow a 7-block pool: the newest is preempted and recomputed."""
    w = Watched(ckpt, num_kv_blocks=7)
    for name, prompt in (("X", "One two three four"), ("Y", "Five six seven eight"),
                         ("Z", "Nine ten eleven twelve")):
        w.add(name, prompt, max_tokens=8)
    while w.engine.has_unfinished_requests():
        w.step()
    return {"preemption": preemption_picture(w.steps)}


def draw_pictures() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_dummy_checkpoint(Path(tmp) / "tour-gpt2", "gpt2", **TINY_MODEL)
        return {**batching_scenario(ckpt), **preemption_scenario(ckpt), **beams_scenario(ckpt)}


def fill(tour: str, pictures: dict[str, str]) -> str:
    """The tour with every picture block replaced; a picture the tour lacks is an error."""
    found = {m["name"] for m in PICTURE.finditer(tour)}
    if missing := sorted(set(pictures) - found):
        raise SystemExit(f"docs/tour.md has no <!-- picture:NAME --> block for {missing}")

    def body(m: re.Match) -> str:
        text = pictures.get(m["name"])
        return m.group(0) if text is None else f"{m.group(1)}```text\n{text}\n```\n{m.group(4)}"
    return PICTURE.sub(body, tour)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tour", type=Path, default=TOUR, help="the tour to update")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the tour's pictures are out of date")
    args = parser.parse_args(argv)
    old = args.tour.read_text()
    new = fill(old, draw_pictures())
    if args.check:
        if new != old:
            print(f"{args.tour}: pictures are out of date; run "
                  "python -m nanovllm.scripts.lab.tour_pictures", file=sys.stderr)
            return 1
        return 0
    args.tour.write_text(new)
    print(f"wrote the pictures of {args.tour}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
