"""The serving benchmark's results: per-request timings, vLLM's summary metrics, the printed
report, the sweep table and the plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nanovllm.scripts.bench_utils import percentile, render_table


@dataclass(slots=True)
class RequestResult:
    ok: bool
    prompt_len: int
    output_tokens: int = 0
    ttft: float = 0.0     # seconds
    latency: float = 0.0  # seconds, request sent -> stream finished
    start: float = 0.0    # time.perf_counter() when it was sent
    itl: list[float] = field(default_factory=list)
    error: str = ""


@dataclass(slots=True)
class Latency:
    """Milliseconds, like vLLM's report."""
    mean: float
    median: float
    p99: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        ms = [s * 1000 for s in seconds]
        return cls(float(np.mean(ms)) if ms else 0.0, percentile(ms, 50), percentile(ms, 99))


@dataclass(slots=True)
class BenchResult:
    max_concurrency: int | None
    request_rate: float
    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft: Latency
    tpot: Latency
    itl: Latency
    e2el: Latency
    errors: dict[str, int]


def summarize(results: list[RequestResult], duration: float, concurrency: int | None,
              rate: float) -> BenchResult:
    ok = [r for r in results if r.ok]
    inputs, outputs = sum(r.prompt_len for r in ok), sum(r.output_tokens for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    return BenchResult(
        max_concurrency=concurrency, request_rate=rate, completed=len(ok),
        failed=len(results) - len(ok), duration=duration, total_input_tokens=inputs,
        total_output_tokens=outputs, request_throughput=len(ok) / duration,
        output_throughput=outputs / duration, total_token_throughput=(inputs + outputs) / duration,
        ttft=Latency.of([r.ttft for r in ok]), tpot=Latency.of(tpots),
        itl=Latency.of([x for r in ok for x in r.itl]), e2el=Latency.of([r.latency for r in ok]),
        errors=errors)




def format_result(b: BenchResult) -> str:
    def line(label: str, value) -> str:
        return f"{label:<40} {value}"

    def section(title: str) -> str:
        return f"{title:-^50}"

    conc = b.max_concurrency if b.max_concurrency else "unlimited"
    rate = "inf" if math.isinf(b.request_rate) else f"{b.request_rate:g}"
    lines = [f"{' Serving Benchmark Result ':=^50}",
             line("Successful requests:", b.completed), line("Failed requests:", b.failed),
             line("Maximum request concurrency:", conc), line("Request rate (req/s):", rate),
             line("Benchmark duration (s):", f"{b.duration:.2f}"),
             line("Total input tokens:", b.total_input_tokens),
             line("Total generated tokens:", b.total_output_tokens),
             line("Request throughput (req/s):", f"{b.request_throughput:.2f}"),
             line("Output token throughput (tok/s):", f"{b.output_throughput:.2f}"),
             line("Total Token throughput (tok/s):", f"{b.total_token_throughput:.2f}")]
    for title, key, name in (("Time to First Token", "ttft", "TTFT"),
                             ("Time per Output Token (excl. 1st token)", "tpot", "TPOT"),
                             ("Inter-token Latency", "itl", "ITL"),
                             ("End-to-end Latency", "e2el", "E2EL")):
        lat = getattr(b, key)
        lines += [section(title), line(f"Mean {name} (ms):", f"{lat.mean:.2f}"),
                  line(f"Median {name} (ms):", f"{lat.median:.2f}"),
                  line(f"P99 {name} (ms):", f"{lat.p99:.2f}")]
    lines.append("=" * 50)
    lines += [f"{n} failed: {err}" for err, n in list(b.errors.items())[:5]]
    return "\n".join(lines)


def format_sweep(results: list[BenchResult]) -> str:
    head = ["concurrency", "ok/failed", "req/s", "out tok/s", "total tok/s",
            "TTFT med/p99 ms", "TPOT med/p99 ms", "ITL med/p99 ms"]
    rows = [head] + [[str(b.max_concurrency or "unlimited"), f"{b.completed}/{b.failed}",
                      f"{b.request_throughput:.2f}", f"{b.output_throughput:.1f}",
                      f"{b.total_token_throughput:.1f}",
                      f"{b.ttft.median:.0f} / {b.ttft.p99:.0f}",
                      f"{b.tpot.median:.1f} / {b.tpot.p99:.1f}",
                      f"{b.itl.median:.1f} / {b.itl.p99:.1f}"] for b in results]
    return render_table(rows)


def plot(results: list[BenchResult], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    xs = [b.max_concurrency or 0 for b in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [b.output_throughput for b in results], "o-", label="output tok/s")
    left.plot(xs, [b.total_token_throughput for b in results], "s--", label="total tok/s")
    left.set(xlabel="concurrent clients", ylabel="tokens / s", title="Throughput", ylim=(0, None))
    for key, color in (("ttft", "C0"), ("tpot", "C1"), ("itl", "C2")):
        right.plot(xs, [getattr(b, key).median for b in results], "o-", color=color,
                   label=f"{key.upper()} median")
        right.plot(xs, [getattr(b, key).p99 for b in results], "o:", color=color,
                   label=f"{key.upper()} p99")
    right.set(xlabel="concurrent clients", ylabel="ms (log scale)", yscale="log", title="Latency")
    for ax in (left, right):
        if len(xs) > 1 and min(xs) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
