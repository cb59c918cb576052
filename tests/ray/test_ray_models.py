"""Several models on Ray Serve with model multiplexing (server/ray/models.py, multiplex.py):
one engine replica that may hold one model at a time, two tiny GPT-2s with different random
weights, the server's model pool over them (its Loader binds a RayEngineClient to each model
id) and the usual FastAPI app, served by real uvicorn.

Each switch from one model to the other makes Serve evict the replica's model and load the
other; every answer must still be its own model's. The same models as a whole Serve application
(`serve run nanovllm.server.ray.app:build models-dir=...`) answer through Ray's HTTP proxy.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_helpers import free_port, serve

from nanovllm import LLM, EngineConfig, SamplingParams
from nanovllm.model import write_dummy_checkpoint
from tests.conftest import TINY

pytestmark = pytest.mark.ray

NAMES = ("alpha", "beta")
PROMPT = "The engine schedules"
TOKENS = 6
SEED = 7


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ray-models")
    return {name: write_dummy_checkpoint(root / name, "gpt2", seed=seed, **TINY)
            for seed, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def multiplexed(checkpoints):
    import ray
    from ray import serve as ray_serve

    from nanovllm.server.app import build_app
    from nanovllm.server.models.catalog import FOREVER, ModelEntry
    from nanovllm.server.models.pool import ModelPool
    from nanovllm.server.ray.client import run_deployment, teardown
    from nanovllm.server.ray.models import models_deployment, ray_loader

    # Logical CPUs: one for this deployment's replica, one for the whole application's.
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=80 * 2**20, log_to_driver=False)
    proxy_port = free_port()
    try:
        ray_serve.start(proxy_location="HeadOnly",
                        http_options={"host": "127.0.0.1", "port": proxy_port})
        configs = {n: EngineConfig(str(p), num_kv_blocks=64) for n, p in checkpoints.items()}
        handle = run_deployment(models_deployment(configs, num_replicas=1, cpus_per_replica=1,
                                                  max_models_per_replica=1))
    except BaseException:
        ray.shutdown()
        raise
    pool = ModelPool([ModelEntry(n, str(p)) for n, p in checkpoints.items()],
                     ray_loader(handle, 1), keep_alive=FOREVER)
    live = serve(build_app(pool), pool)
    yield live.url, handle, proxy_port
    live.stop()
    pool.shutdown()
    teardown(owns_ray=True)


def alone(path) -> str:
    """The model's seeded sample served alone, by a local engine. (Sampled rather than greedy:
    tiny random models often repeat one token greedily, the same one for both.)"""
    params = SamplingParams(temperature=1, seed=SEED, max_tokens=TOKENS, ignore_eos=True)
    return LLM(str(path), num_kv_blocks=64).generate([PROMPT], params, use_tqdm=False)[0] \
        .outputs[0].text


@pytest.fixture(scope="module")
def expected(checkpoints) -> dict[str, str]:
    texts = {name: alone(path) for name, path in checkpoints.items()}
    assert texts["alpha"] != texts["beta"]  # different weights: telling them apart
    return texts


def completion(http: httpx.Client, name: str) -> dict:
    return http.post("/v1/completions", json={
        "model": name, "prompt": PROMPT, "temperature": 1, "seed": SEED, "max_tokens": TOKENS,
        "ignore_eos": True}).json()


def test_each_request_is_answered_by_its_model(multiplexed, expected):
    url = multiplexed[0]
    with httpx.Client(base_url=url, timeout=300) as http:
        for name in ("alpha", "beta", "alpha"):  # each switch evicts the other model
            body = completion(http, name)
            assert body["model"] == name, body
            assert body["choices"][0]["text"] == expected[name], name
        states = {m["id"]: m["state"] for m in http.get("/v1/models").json()["data"]}
        assert states == {"alpha": "loaded", "beta": "loaded"}
        err = http.post("/v1/completions", json={"model": "gamma", "prompt": "x"})
        assert err.status_code == 404 and err.json()["error"]["param"] == "model"


def test_the_replica_serves_the_model_its_call_names(multiplexed, checkpoints):
    """serve.get_multiplexed_model_id() picks the engine: a call's model id is the checkpoint
    the replica describes; an id outside the catalog is that call's error, naming it."""
    handle = multiplexed[1]
    for name in ("beta", "alpha"):
        assert described(handle, name).model_path == str(checkpoints[name])
    with pytest.raises(Exception, match="gamma"):
        described(handle, "gamma")


def described(handle, name: str):
    """The replica's describe() of model `name`, waited for on a thread of its own: Serve
    refuses a blocking wait where an event loop runs, as playwright's sync API leaves one
    running when the browser tests ran earlier in this process."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(
            lambda: handle.options(multiplexed_model_id=name).describe.remote().result()
        ).result()


def test_the_whole_serve_application_serves_a_models_dir(multiplexed, checkpoints, expected):
    """nanovllm.server.ray.app:build with models-dir= (for `serve run`, KubeRay): the ingress's
    model pool over multiplexed replicas, behind Ray's HTTP proxy."""
    from ray import serve

    from nanovllm.server.ray.app import build

    models_dir = checkpoints["alpha"].parent  # (holds alpha and beta)
    serve.run(build({"models-dir": str(models_dir), "data-parallel-size": "1",
                     "num-kv-blocks": "64", "max-loaded-models": "1"}),
              name="whole", route_prefix="/whole")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{multiplexed[2]}/whole",
                          timeout=300) as http:
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == list(NAMES)
            for name in ("beta", "alpha"):
                body = completion(http, name)
                assert body["model"] == name, body
                assert body["choices"][0]["text"] == expected[name], name
    finally:
        serve.delete("whole")
