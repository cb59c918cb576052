"""The engine's request rules over HTTP: each is a 400 naming its field, decided before the
request reaches the engine loop, and the loop keeps the field when the engine refuses.

The server has the engine's input processor check a request once, in `prepare`; the proof that nothing is submitted is
an engine loop that has been shut down: whatever reaches it gets a 503, so a 400 means the
request was answered before it.
"""

from __future__ import annotations

import httpx
import pytest
from server_helpers import MODEL, error_of, make_engine, serve

from nanovllm.server.app import build_app

SMALL_KV_BLOCKS = 4  # 64 tokens of KV cache: less than one full 256-token context

ENGINE_RULES = [  # (request body, the field the 400 names)
    ({"prompt": [1] * 256, "max_tokens": None}, "prompt"),  # the prompt fills the context
    ({"prompt": [1] * 200, "max_tokens": 50}, "max_tokens"),  # prompt + completion overflow
    ({"prompt": "hi", "max_tokens": 100}, "max_tokens"),  # more than the whole KV cache
    ({"prompt": "hi", "max_tokens": None}, "max_tokens"),  # "up to the context": the same
    ({"prompt": [[1], [1024]], "max_tokens": 4}, "prompt"),  # outside the vocabulary
    ({"prompt": "hi", "logit_bias": {"1024": 5}}, "logit_bias"),
    ({"prompt": "hi", "stop_token_ids": [7, 1024]}, "stop_token_ids"),
]


@pytest.fixture(scope="module")
def closed_engine(tiny_ckpt):
    """A server whose engine loop is shut down: a request that reaches the loop is a 503."""
    loop = make_engine(tiny_ckpt, num_kv_blocks=SMALL_KV_BLOCKS)
    loop.shutdown()
    srv = serve(build_app(loop, served_model_name=MODEL), loop)
    yield srv
    srv.stop()


@pytest.mark.parametrize(("body", "param"), ENGINE_RULES,
                         ids=[f"{param}-{i}" for i, (_, param) in enumerate(ENGINE_RULES)])
def test_engine_rule_is_a_400_before_the_engine(closed_engine, body, param):
    with httpx.Client(base_url=closed_engine.url, timeout=30) as c:
        err = error_of(c.post("/v1/completions", json={"model": MODEL, **body}), 400)
        assert err["param"] == param and err["type"] == "BadRequestError", err


def test_a_valid_request_does_reach_the_closed_engine(closed_engine):
    """What makes the 400s above mean "answered before the engine loop"."""
    with httpx.Client(base_url=closed_engine.url, timeout=30) as c:
        err = error_of(c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4}), 503)
        assert "shutting down" in err["message"]
