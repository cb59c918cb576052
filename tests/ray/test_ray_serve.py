"""Two engine replicas on Ray Serve behind the one OpenAI endpoint, through real HTTP and the
real `openai` client: streaming and not, spreading, prefix affinity, a killed replica, shutdown.

The tests share one deployment and run in file order; the last one shuts it down.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from contextlib import ExitStack

import httpx
import openai
import pytest
from ray_helpers import ENDLESS_CONTEXT, LONG_CONTEXT, ray_processes
from server_helpers import MODEL
from server_helpers import serve as serve_app

pytestmark = pytest.mark.ray

SHARED_PREFIX = " ".join(f"w{i}" for i in range(40))  # well over one 16-token block


def per_replica(metrics_text: str, name: str) -> dict[str, float]:
    """{replica: value} of one metric's per-replica series."""
    pattern = re.compile(rf'^{re.escape(name)}\{{model_name="{MODEL}",replica="([^"]+)"\}} (\S+)$')
    return {m[1]: float(m[2]) for line in metrics_text.splitlines() if (m := pattern.match(line))}


def scrape(deployment, name: str) -> dict[str, float]:
    return per_replica(httpx.get(f"{deployment.live.url}/metrics", timeout=30).text, name)


def delta(after: dict, before: dict) -> dict:
    return {r: v - before.get(r, 0.0) for r, v in after.items() if v != before.get(r, 0.0)}


@pytest.fixture
def client(ray_deployment) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ray_deployment.live.url}/v1", api_key="unused",
                         max_retries=0, timeout=120)


def test_completions_streamed_and_not_match(ray_deployment, client):
    # The replica coalesces outputs when its caller falls behind (by design), so a short
    # generation can arrive as one chunk on a loaded machine; 400 steps cannot.
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=400, temperature=0.0)
    whole = client.completions.create(**kwargs, extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(**kwargs, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert whole.usage.completion_tokens == 400
    assert len([c for c in chunks if c.choices[0].text]) > 1  # streamed, not one blob
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_the_ray_client_is_an_engine_client(ray_deployment):
    """What the server may use of an engine (nanovllm/engine_client.py), all of it there."""
    from nanovllm.engine_client import EngineClient

    client = ray_deployment.client
    assert isinstance(client, EngineClient)
    assert client.degraded is None  # both replicas run


def test_each_replica_sizes_its_threads_to_its_cpus(ray_deployment):
    info = ray_deployment.handle.describe.remote().result()
    assert info.threads == 1  # deployed with one CPU per replica; the machine has more cores


def test_the_rest_of_the_api_is_the_same_app(ray_deployment, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    with httpx.Client(base_url=ray_deployment.live.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        ids = http.post("/tokenize", json={"prompt": "hello world"}).json()["tokens"]
        assert http.post("/detokenize", json={"tokens": ids}).json()["prompt"] == "hello world"
        err = http.post("/v1/completions", json={"model": MODEL, "prompt": "x",
                                                 "max_tokens": 10_000}).json()["error"]
    assert err["param"] == "max_tokens" and err["code"] == 400
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=1)


def test_the_web_pages_engine_views_say_why_they_are_off(ray_deployment):
    """The engine and attention views draw one engine (they look through an inspector, which
    replicas have none of); across replicas they answer 503 with the reason, and the page's
    info says they are off."""
    with httpx.Client(base_url=ray_deployment.live.url, timeout=30) as http:
        info = http.get("/ui/api/info").json()
        assert info["inspection"] is False and info["step_mode"] is False
        for r in (http.get("/ui/api/engine"),
                  http.post("/ui/api/attention", json={"prompt": "hello", "layer": 0, "head": 0})):
            assert r.status_code == 503
            assert "--data-parallel-size" in r.json()["error"]["message"]


def test_requests_spread_over_both_replicas(ray_deployment):
    """Concurrent short prompts (no prefix to follow): power of two choices uses both."""
    before = scrape(ray_deployment, "vllm:generation_tokens_total")
    aclient = openai.AsyncOpenAI(base_url=f"{ray_deployment.live.url}/v1", api_key="unused",
                                 max_retries=0, timeout=120)

    async def run():
        await asyncio.gather(*(aclient.completions.create(
            model=MODEL, prompt=f"request {i}", max_tokens=24, extra_body={"ignore_eos": True})
            for i in range(16)))

    asyncio.run(run())
    served = delta(scrape(ray_deployment, "vllm:generation_tokens_total"), before)
    assert len(served) == 2 and sum(served.values()) == 16 * 24, served


def test_shared_prefix_requests_hit_one_replicas_cache(ray_deployment, client):
    hits_before = scrape(ray_deployment, "vllm:prefix_cache_hits_total")
    prompt_before = scrape(ray_deployment, "vllm:prompt_tokens_total")
    for i in range(6):
        client.completions.create(model=MODEL, prompt=f"{SHARED_PREFIX} question {i}",
                                  max_tokens=2)
    prompts = delta(scrape(ray_deployment, "vllm:prompt_tokens_total"), prompt_before)
    hits = delta(scrape(ray_deployment, "vllm:prefix_cache_hits_total"), hits_before)
    assert len(prompts) == 1, prompts  # every one went to the same replica
    assert list(hits) == list(prompts)
    shared_blocks = len(ray_deployment.client.tokenizer.encode(SHARED_PREFIX)) // 16
    assert next(iter(hits.values())) >= 5 * shared_blocks * 16  # all but the first reused it


def replica_pids(deployment, tries: int = 100) -> dict[str, int]:
    """{replica id: pid} of the replicas that answer describe() (routed at random: asked until
    two answered or `tries` calls were made)."""
    pids = {}
    for _ in range(tries):
        info = deployment.handle.describe.remote().result()
        pids[info.replica_id] = info.pid
        if len(pids) == 2:
            break
    return pids


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


def test_killed_replica_is_replaced_and_loses_no_request_that_had_not_started(ray_deployment,
                                                                              client):
    pids = replica_pids(ray_deployment)
    assert len(pids) == 2
    stream = client.completions.create(model=MODEL, prompt="a long story", n=4, max_tokens=900,
                                       stream=True, extra_body={"ignore_eos": True})
    first = next(iter(stream))
    assert first.choices[0].text is not None
    running = scrape(ray_deployment, "vllm:num_requests_running")
    victim = next(r for r, n in running.items() if n == 1)
    os.kill(pids[victim], signal.SIGKILL)

    def health():
        return httpx.get(f"{ray_deployment.live.url}/health", timeout=10)

    # Until Ray has a new replica running, /health says so (200: the survivor serves).
    degraded = wait_for(lambda: (r := health()).content and r, 60, "/health to say degraded")
    assert degraded.status_code == 200
    assert degraded.json() == {"status": "degraded", "message": "1 of 2 engine replicas running"}

    # New requests meanwhile: each is served (by the survivor, or resent if it had been
    # routed to the dead replica before Ray noticed).
    for i in range(6):
        out = client.completions.create(model=MODEL, prompt=f"after the crash {i}", max_tokens=4,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 4
    # The stream that was running on it ends with an OpenAI-shaped error event.
    with pytest.raises(openai.APIError, match="replica serving this request failed"):
        for chunk in stream:
            assert chunk.choices[0].finish_reason is None, "it finished before the kill"

    # Ray replaces the replica; then /health is plainly healthy again.
    def replaced():
        now = replica_pids(ray_deployment, tries=20)
        return len(now) == 2 and pids[victim] not in now.values()

    def healthy():
        r = health()
        return r.status_code == 200 and not r.content

    wait_for(replaced, 120, "a new replica in place of the killed one")
    wait_for(healthy, 10, "/health to see both replicas running")
    out = client.completions.create(model=MODEL, prompt="recovered", max_tokens=3,
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length"


def test_whole_serve_application(ray_deployment, long_ckpt):
    """nanovllm.server.ray.app:build (for `serve run`, KubeRay): the same app as a Serve ingress
    behind Ray's HTTP proxy, streaming through it."""
    from ray import serve

    from nanovllm.server.ray.app import build

    serve.run(build({"model": str(long_ckpt), "data-parallel-size": "1", "num-kv-blocks": "64",
                     "disable-ui": "true"}), name="whole", route_prefix="/whole")
    url = f"http://127.0.0.1:{ray_deployment.proxy_port}/whole"
    name = long_ckpt.name  # `nanovllm serve`'s rule: the directory's name, never the path
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert [(m.id, m.root) for m in client.models.list().data] == [(name, name)]
        assert httpx.get(f"{url}/ui").status_code == 404
        # Long enough that the first event reaches the client while the engine still decodes:
        # a replica coalesces outputs a slow reader has not taken, so a short stream can
        # arrive whole on a fast machine without anything buffering it.
        kwargs = dict(model=name, prompt="Once upon a time", max_tokens=LONG_CONTEXT - 8,
                      temperature=0.0, extra_body={"ignore_eos": True})
        whole = client.completions.create(**kwargs).choices[0].text
        stream = iter(client.completions.create(**kwargs, stream=True))
        first = next(stream).choices[0]
        assert first.finish_reason is None and len(first.text) < len(whole) / 2
        rest = [c.choices[0].text for c in stream]
        assert first.text + "".join(rest) == whole
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            client.completions.create(model=name, prompt="x", max_tokens=100_000)
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and not health.content
    finally:
        serve.delete("whole")


def test_a_full_queue_sends_the_request_to_another_replica(ray_deployment, endless_ckpt):
    """Replicas that run 4 sequences and queue 4 more: requests sharing a prompt prefix all
    prefer one replica; once its queue is full the next go to the other, and only when both
    are full is the client told 429."""
    from ray import serve

    from nanovllm import EngineConfig
    from nanovllm.server.app import build_app
    from nanovllm.server.ray.client import RayEngineClient, deploy

    config = EngineConfig(str(endless_ckpt), num_kv_blocks=2048, max_num_seqs=4,
                          max_waiting_seqs=4)
    handle = deploy(config, 2, 1, app_name="full")
    client = RayEngineClient(handle, handle.describe.remote().result(), 2, app_name="full")
    live = serve_app(build_app(client, served_model_name=MODEL), client)
    # The queues must stay as filled while the test looks, so no request may finish: with the
    # old 900 tokens (1-5 s of decoding) a loaded machine's five trips through Ray could take
    # longer. The streams are closed (aborted) at the end, so their length costs nothing.
    body = {"model": MODEL, "prompt": f"{SHARED_PREFIX} go", "n": 4,
            "max_tokens": ENDLESS_CONTEXT - 1000, "ignore_eos": True, "stream": True}
    # 1: runs on the preferred replica; 2: waits there (its queue is full); 3: refused there,
    # runs on the other; 4: refused there, waits on the other. The replicas as each request
    # leaves them, (requests held, sequences waiting) of each busy one: a request is taken
    # into the waiting queue before the replica's next step runs it, so the next request is
    # sent only once the state is reached (else it can find a queue full for a moment).
    after = [[(1, 0)], [(2, 4)], [(1, 0), (2, 4)], [(2, 4), (2, 4)]]

    def busy_replicas():
        return sorted(t for s in client.replica_stats.values()
                      if (t := (s.num_running + s.num_waiting, s.num_waiting_seqs)) != (0, 0))

    try:
        with httpx.Client(base_url=live.url, timeout=60) as http, ExitStack() as streams:
            for expected in after:
                response = streams.enter_context(http.stream("POST", "/v1/completions",
                                                             json=body))
                assert response.status_code == 200, response.read()
                # The running requests' outputs bring their replica's stats every step, so
                # 30 s only bounds a hang.
                wait_for(lambda want=expected: busy_replicas() == want, 30,
                         f"the replicas at {expected}")
            refused = http.post("/v1/completions", json=body)
        err = refused.json()["error"]
        assert refused.status_code == 429 and err["code"] == 429, refused.text
        assert "busy" in err["message"] and refused.headers["retry-after"]
    finally:
        live.stop()
        client.shutdown()
        serve.delete("full")


def test_shutdown_leaves_no_ray_process(ray_deployment):
    assert ray_processes(ray_deployment.session_dir)  # the check can see them while they run
    ray_deployment.stop()
    wait_for(lambda: not ray_processes(ray_deployment.session_dir), 30, "Ray processes to exit")
