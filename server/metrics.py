"""Prometheus metrics under vLLM's names, in a per-app CollectorRegistry (no global state).

Engine-level numbers (queue lengths, KV usage, token and prefix-cache counters) are read at
scrape time from the engine loop's stats snapshot by a custom collector; per-request
latencies (TTFT, inter-token, end-to-end) and finished-request counts are observed by the
HTTP side as outputs arrive, which is what a client experiences.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from nanovllm.stats import ITERATION_TOKENS_BUCKETS
from nanovllm.values.outputs import PoolingRequestOutput

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# vLLM's request phases (queue, prefill, decode, inference) share the end-to-end buckets.
PHASE_BUCKETS = E2E_BUCKETS
N_BUCKETS = (1, 2, 5, 10, 20)


def buckets_1_2_5(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_value: vLLM's token-count buckets (max_model_len)."""
    out, scale = [], 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return out
            out.append(m * scale)
        scale *= 10


class EngineStatsCollector:
    """Exposes the engine's EngineStats snapshot as gauges and counters.

    `stats` returns one EngineStats, or a mapping replica -> EngineStats when the app serves
    several engine replicas (server/ray/client.py); each replica is then one labelled series;
    or a list of (model name, EngineStats) when it serves several models, one series each.
    """

    GAUGES = (
        ("vllm:num_requests_running", "Number of requests in model execution batches.", "num_running"),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "num_waiting"),
        ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage"),
        ("nanovllm:num_free_kv_blocks", "Free KV-cache blocks.", "num_free_blocks"),
        ("nanovllm:num_kv_blocks", "Total KV-cache blocks.", "num_total_blocks"),
        ("nanovllm:num_waiting_seqs", "Sequences waiting to be admitted.", "num_waiting_seqs"),
    )
    COUNTERS = (
        ("vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt_tokens_total"),
        ("vllm:generation_tokens", "Number of generation tokens processed.", "generation_tokens_total"),
        ("vllm:num_preemptions", "Cumulative number of preemptions.", "num_preemptions_total"),
        ("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.", "prefix_cache_queries"),
        ("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", "prefix_cache_hits"),
        ("nanovllm:num_aborted_requests", "Requests aborted in the engine.", "num_aborted_total"),
        ("nanovllm:engine_steps", "Engine steps that ran the model.", "num_steps_total"),
    )

    def __init__(self, stats: Callable[[], object], model_name: str) -> None:
        self._stats = stats
        self._model_name = model_name

    def collect(self):
        stats = self._stats()
        if isinstance(stats, list):  # several models: [(model name, EngineStats)], one each
            names, series = ["model_name"], [([name], s) for name, s in stats]
        elif isinstance(stats, Mapping):
            names = ["model_name", "replica"]
            series = [([self._model_name, replica], s) for replica, s in sorted(stats.items())]
        else:
            names, series = ["model_name"], [([self._model_name], stats)]
        for kind, table in ((GaugeMetricFamily, self.GAUGES), (CounterMetricFamily, self.COUNTERS)):
            for name, doc, attr in table:
                family = kind(name, doc, labels=names)
                for labels, s in series:
                    family.add_metric(labels, float(getattr(s, attr)))
                yield family
        yield self._iteration_tokens(names, series)
        yield self._cache_config_info(names, series)
        yield from self._spec_decode(names, series)
        yield from self._prefix_cache_disk(names, series)
        yield from self._lora_info(names, series)

    @staticmethod
    def _iteration_tokens(names: list[str], series) -> HistogramMetricFamily:
        """Tokens per engine step, from the engine's per-bucket counts (vLLM's buckets)."""
        family = HistogramMetricFamily("vllm:iteration_tokens_total",
                                       "Histogram of number of tokens per engine_step.",
                                       labels=names)
        for labels, s in series:
            counts = list(s.iteration_tokens) or [0] * (len(ITERATION_TOKENS_BUCKETS) + 1)
            bounds = [*map(floatToGoString, ITERATION_TOKENS_BUCKETS), "+Inf"]
            cumulative = [sum(counts[:i + 1]) for i in range(len(counts))]
            family.add_metric(labels, list(zip(bounds, cumulative, strict=True)),
                              float(s.iteration_tokens_sum))
        return family

    SPEC_DECODE = (
        ("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.",
         "spec_decode_num_drafts"),
        ("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.",
         "spec_decode_num_draft_tokens"),
        ("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.",
         "spec_decode_num_accepted_tokens"),
    )

    @classmethod
    def _spec_decode(cls, names: list[str], series):
        """vLLM's spec-decode counters, only where speculation is configured (as vLLM)."""
        series = [(labels, s) for labels, s in series if s.spec_decode_accepted_per_position]
        if not series:
            return
        for name, doc, attr in cls.SPEC_DECODE:
            family = CounterMetricFamily(name, doc, labels=names)
            for labels, s in series:
                family.add_metric(labels, float(getattr(s, attr)))
            yield family
        family = CounterMetricFamily("vllm:spec_decode_num_accepted_tokens_per_pos",
                                     "Accepted tokens per draft position.",
                                     labels=[*names, "position"])
        for labels, s in series:
            for position, count in enumerate(s.spec_decode_accepted_per_position):
                family.add_metric([*labels, str(position)], float(count))
        yield family

    PREFIX_CACHE_DISK = (
        ("nanovllm:prefix_cache_disk_lookups", "Blocks looked for in the prefix cache directory.",
         "lookups"),
        ("nanovllm:prefix_cache_disk_hits", "Blocks read back from the prefix cache directory.",
         "hits"),
        ("nanovllm:prefix_cache_disk_writes", "Blocks written to the prefix cache directory.",
         "writes"),
        ("nanovllm:prefix_cache_disk_dropped",
         "Blocks not written to the prefix cache directory (writer behind, or writing off).",
         "dropped"),
        ("nanovllm:prefix_cache_disk_evictions",
         "Block files removed to keep the prefix cache directory within its bound.", "evictions"),
        ("nanovllm:prefix_cache_disk_invalid",
         "Block files found truncated, corrupted or foreign, and skipped.", "invalid"),
        ("nanovllm:prefix_cache_disk_read_bytes", "Bytes read from the prefix cache directory.",
         "bytes_read"),
        ("nanovllm:prefix_cache_disk_written_bytes", "Bytes written to the prefix cache directory.",
         "bytes_written"),
    )

    @classmethod
    def _prefix_cache_disk(cls, names: list[str], series):
        """The prefix cache directory's counters, only where one is configured."""
        series = [(labels, s.prefix_cache_disk) for labels, s in series if s.prefix_cache_disk]
        if not series:
            return
        for name, doc, attr in cls.PREFIX_CACHE_DISK:
            family = CounterMetricFamily(name, doc, labels=names)
            for labels, disk in series:
                family.add_metric(labels, float(getattr(disk, attr)))
            yield family

    @staticmethod
    def _lora_info(names: list[str], series):
        """vLLM's vllm:lora_requests_info, where LoRA is on: the adapters of the running and of
        the waiting requests (comma-separated names) in its labels; its value is the time it
        was read, as vLLM's."""
        series = [(labels, s.lora) for labels, s in series if s.lora]
        if not series:
            return
        family = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                   labels=[*names, "max_lora", "waiting_lora_adapters",
                                           "running_lora_adapters"])
        for labels, lora in series:
            family.add_metric([*labels, str(lora.max_loras), ",".join(lora.waiting),
                               ",".join(lora.running)], time.time())
        yield family

    @staticmethod
    def _cache_config_info(names: list[str], series) -> GaugeMetricFamily:
        """vLLM's info gauge (always 1) whose labels are the KV cache's configuration."""
        keys = ["block_size", "cache_dtype", "enable_prefix_caching", "num_gpu_blocks"]
        family = GaugeMetricFamily("vllm:cache_config_info",
                                   "Information of the LLMEngine CacheConfig",
                                   labels=[*names, *keys])
        for labels, s in series:
            values = [s.block_size, s.kv_cache_dtype, s.enable_prefix_caching,
                      s.num_total_blocks]
            family.add_metric([*labels, *map(str, values)], 1.0)
        return family


class ServerMetrics:
    """All metrics of one app; `tracker()` hands out a per-request latency recorder."""

    def __init__(self, model_name: str, stats: Callable[[], object],
                 max_model_len: int = 1024) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        labels = ["model_name"]
        self._request_histograms(labels, max_model_len)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                              labels, buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency.",
                             labels, buckets=ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.",
                             labels, buckets=E2E_BUCKETS, registry=self.registry)
        self.success = Counter("vllm:request_success", "Count of finished requests.",
                               ["model_name", "finished_reason"], registry=self.registry)
        self.pooling_requests = Counter("nanovllm:pooling_requests",
                                        "Finished pooling requests (texts embedded, pairs "
                                        "scored), by task.", ["model_name", "task"],
                                        registry=self.registry)
        # Per endpoint: what vLLM's instrumentator exports (server/middleware.py counts).
        self.http_requests = Counter("http_requests", "Requests answered, by route (handler), "
                                     "method and status class.", ["handler", "method", "status"],
                                     registry=self.registry)
        self.registry.register(EngineStatsCollector(stats, model_name))
        self._label_series()
        self._models: dict[str, ServerMetrics] = {model_name: self}  # for_model's, by name

    def for_model(self, model_name: str) -> ServerMetrics:
        """These metrics as one model's series (a server of several models labels each
        request by its model): the same families, their children labelled `model_name`."""
        view = self._models.get(model_name)
        if view is None:
            view = copy.copy(self)
            view.model_name = model_name
            view._label_series()
            self._models[model_name] = view
        return view

    def _label_series(self) -> None:
        """This model's series, looked up once: RequestTracker observes them per token."""
        self.ttft_series, self.itl_series, self.e2e_series = (
            h.labels(self.model_name) for h in (self.ttft, self.itl, self.e2e))
        (self.prompt_tokens, self.generation_tokens, self.params_n, self.params_max_tokens,
         self.queue_time, self.inference_time, self.prefill_time, self.decode_time) = (
            h.labels(self.model_name) for h in self._request_families)

    def _request_histograms(self, labels: list[str], max_model_len: int) -> None:
        """vLLM's per-request histograms, observed once per finished engine request (their
        series: _label_series)."""
        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        tokens = buckets_1_2_5(max_model_len)
        self._request_families = [
            histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                      tokens),
            histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                      tokens),
            histogram("vllm:request_params_n", "Histogram of the n request parameter.",
                      N_BUCKETS),
            histogram("vllm:request_params_max_tokens",
                      "Histogram of the max_tokens request parameter.", tokens),
            *(histogram(f"vllm:request_{phase}_time_seconds",
                        f"Histogram of time spent in {state} phase for request.", PHASE_BUCKETS)
              for phase, state in (("queue", "WAITING"), ("inference", "RUNNING"),
                                   ("prefill", "PREFILL"), ("decode", "DECODE")))]
        self.max_model_len = max_model_len

    def observe_finished(self, output, max_tokens: int | None, n: int) -> None:
        """A finished engine request: its sizes, its parameters and its phases' durations."""
        num_prompt = len(output.prompt_token_ids)
        self.prompt_tokens.observe(num_prompt)
        self.generation_tokens.observe(sum(len(o.token_ids) for o in output.outputs))
        self.params_n.observe(n)
        # max_tokens null means up to the context, the number vLLM fills in for it.
        self.params_max_tokens.observe(max_tokens if max_tokens is not None
                                       else self.max_model_len - num_prompt)
        t = output.metrics
        if t is None or t.first_scheduled_time is None:
            return
        self.queue_time.observe(t.first_scheduled_time - t.arrival_time)
        if t.first_token_time is not None:
            self.prefill_time.observe(t.first_token_time - t.first_scheduled_time)
            self.decode_time.observe(t.last_token_time - t.first_token_time)
            self.inference_time.observe(t.last_token_time - t.first_scheduled_time)

    def observe_pooled(self, output, task: str) -> None:
        """A finished pooling request (an embedding or a score): its prompt's size, its
        phases, and one count by task."""
        self.prompt_tokens.observe(len(output.prompt_token_ids))
        self.pooling_requests.labels(self.model_name, task).inc()
        self.success.labels(self.model_name, "stop").inc()
        t = output.metrics
        if t is not None and t.first_scheduled_time is not None:
            self.queue_time.observe(t.first_scheduled_time - t.arrival_time)
            self.inference_time.observe(t.last_token_time - t.first_scheduled_time)
            self.prefill_time.observe(t.last_token_time - t.first_scheduled_time)
    def count_http_request(self, handler: str, method: str, status: str) -> None:
        self.http_requests.labels(handler, method, status).inc()

    def tracker(self, params=None) -> RequestTracker:
        return RequestTracker(self, params)


class RequestTracker:
    """Latency bookkeeping of one HTTP request (one engine request per prompt, keyed by tag).

    TTFT and end-to-end latency are per engine request; inter-token latency is per sample
    (tag, output.index), as vLLM's is per sequence: with n > 1 each sample's gaps are its own,
    not one step's gap shared out over the n tokens the step produced.
    """

    def __init__(self, metrics: ServerMetrics, params=None) -> None:
        self._m = metrics
        self._params = params  # the request's SamplingParams: its n and max_tokens
        self._start = time.perf_counter()
        self._first_seen: set[int] = set()  # tags whose first token was observed (TTFT)
        self._last: dict[tuple[int, int], tuple[float, int]] = {}  # sample -> (time, tokens)
        self._done: set[int] = set()

    def observe(self, tag: int, output) -> None:
        now = time.perf_counter()
        if isinstance(output, PoolingRequestOutput):  # one result, no tokens generated
            if tag not in self._done:
                self._done.add(tag)
                self._m.e2e_series.observe(now - self._start)
                self._m.observe_pooled(output, self._params.task)
            return
        for o in output.outputs:
            self._observe_sample(now, (tag, o.index), len(o.token_ids))
        if tag not in self._first_seen and any(o.token_ids for o in output.outputs):
            self._first_seen.add(tag)
            self._m.ttft_series.observe(now - self._start)
        if output.finished and tag not in self._done:
            self._done.add(tag)
            self._m.e2e_series.observe(now - self._start)
            if self._params is not None:
                self._m.observe_finished(output, self._params.max_tokens, self._params.n)
            for o in output.outputs:
                self._m.success.labels(self._m.model_name, o.finish_reason or "abort").inc()

    def _observe_sample(self, now: float, sample: tuple[int, int], tokens: int) -> None:
        """Each token after the sample's first is one ITL observation (nothing precedes the first)."""
        last_time, last_tokens = self._last.get(sample, (None, 0))
        new = tokens - last_tokens
        if new <= 0:
            return
        if last_time is not None:
            for _ in range(new):  # outputs can arrive coalesced: spread the gap evenly
                self._m.itl_series.observe((now - last_time) / new)
        self._last[sample] = (now, tokens)

    def aborted(self, tag: int, n: int) -> None:
        if tag not in self._done:
            self._done.add(tag)
            self._m.success.labels(self._m.model_name, "abort").inc(n)
