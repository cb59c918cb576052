"""Ray fixtures: the tiny checkpoint with long contexts, and one deployment of it
(`ray_helpers.start_deployment`: a local Ray instance, 2 engine replicas on Ray Serve, and the
usual FastAPI app over them served by real uvicorn).

Starting Ray and two replica processes is the slow part, so one deployment serves the whole
module (tests/ray/test_ray_serve.py); its last test shuts it down and checks that no Ray
process is left.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from ray_helpers import (  # noqa: E402
    ENDLESS_CONTEXT,
    LONG_CONTEXT,
    RayDeployment,
    start_deployment,
)

from tests.conftest import TINY  # noqa: E402

NUM_KV_BLOCKS = 512


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
    from nanovllm import EngineConfig

    # Logical CPUs: one per engine replica, one more for test_whole_serve_application's, two
    # for test_a_full_queue_sends_the_request_to_another_replica's; Ray's HTTP proxy for the
    # whole-Serve application test.
    deployment = start_deployment(EngineConfig(str(long_ckpt), num_kv_blocks=NUM_KV_BLOCKS),
                                  num_cpus=5, proxy=True)
    yield deployment
    deployment.stop()
