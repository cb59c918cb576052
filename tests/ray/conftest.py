"""Ray fixtures: a local Ray instance (3 logical CPUs, loopback, no dashboard), 2 engine
replicas of the tiny checkpoint on Ray Serve, and the usual FastAPI app over them served by
real uvicorn.

Starting Ray and two replica processes is the slow part, so one deployment serves the whole
module (tests/ray/test_ray_serve.py); its last test shuts it down and checks that no Ray
process is left.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from ray_helpers import ENDLESS_CONTEXT, LONG_CONTEXT  # noqa: E402
from server_helpers import MODEL, LiveServer, free_port  # noqa: E402
from server_helpers import serve as serve_app  # noqa: E402

from tests.conftest import TINY  # noqa: E402

NUM_KV_BLOCKS = 512


@dataclass
class RayDeployment:
    live: LiveServer
    client: object  # RayEngineClient
    handle: object  # the engine deployment's DeploymentHandle
    session_dir: str
    proxy_port: int  # Ray Serve's own HTTP proxy

    def stop(self) -> None:
        self.live.stop()
        self.client.shutdown()


@pytest.fixture(scope="session")
def long_ckpt(tmp_path_factory):
    """The tiny checkpoint with a 1,024-token context."""
    from nanovllm.model import write_dummy_checkpoint

    return write_dummy_checkpoint(tmp_path_factory.mktemp("tiny-long"), "gpt2",
                                  **{**TINY, "n_positions": LONG_CONTEXT})


@pytest.fixture(scope="session")
def endless_ckpt(tmp_path_factory):
    """The tiny checkpoint with an 8,192-token context."""
    from nanovllm.model import write_dummy_checkpoint

    return write_dummy_checkpoint(tmp_path_factory.mktemp("tiny-endless"), "gpt2",
                                  **{**TINY, "n_positions": ENDLESS_CONTEXT})


@pytest.fixture(scope="module")
def ray_deployment(long_ckpt) -> Iterator[RayDeployment]:
    import ray
    from ray import serve

    from nanovllm import EngineConfig
    from nanovllm.server.app import build_app
    from nanovllm.server.ray.client import RayEngineClient, deploy, teardown

    # Logical CPUs: one per engine replica, one more for test_whole_serve_application's, two
    # for test_a_full_queue_sends_the_request_to_another_replica's.
    context = ray.init(num_cpus=5, include_dashboard=False, _node_ip_address="127.0.0.1",
                       object_store_memory=80 * 2**20, log_to_driver=False)
    session_dir = context.address_info["session_dir"]
    proxy_port = free_port()
    try:
        # Ray's HTTP proxy, for the whole-Serve application test (deploy() leaves it as is).
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1",
                                                               "port": proxy_port})
        handle = deploy(EngineConfig(str(long_ckpt), num_kv_blocks=NUM_KV_BLOCKS), 2, 1)
        client = RayEngineClient(handle, handle.describe.remote().result(), 2,
                                 teardown=lambda: teardown(owns_ray=True))
    except BaseException:
        ray.shutdown()
        raise
    live = serve_app(build_app(client, served_model_name=MODEL), client)
    deployment = RayDeployment(live, client, handle, session_dir, proxy_port)
    yield deployment
    deployment.stop()
