"""Schema-driven fuzzing: schemathesis generates requests from the server's own OpenAPI
document, valid ones and invalid ones, and no response may be a 5xx.

Bounded: the document is fetched from the live server and its max_tokens/n ceilings are
lowered before generation (valid cases stay quick with the tiny model); each operation gets
a fixed number of examples per mode, with no per-example deadline. (schemathesis' pytest
plugin, `from_fixture`, is incompatible with pytest 9, so the Hypothesis strategies of the
operations are driven directly.)
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from server_helpers import wait_idle

MAX_EXAMPLES = 30
OPERATIONS = [
    ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
    ("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/health"), ("GET", "/version"),
    ("GET", "/metrics"), ("GET", "/tokenizer_info"), ("GET", "/load"), ("POST", "/invocations"),
    ("POST", "/v1/responses"), ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"), ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"), ("POST", "/v1/embeddings"), ("POST", "/v1/score"),
    ("POST", "/score"), ("POST", "/v1/rerank"), ("POST", "/rerank"),
    ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/embed"),
    ("POST", "/api/embeddings"), ("GET", "/api/tags"), ("POST", "/api/show"),
    ("GET", "/api/ps"), ("GET", "/api/version"),
    ("POST", "/v1/models/load"), ("POST", "/v1/models/unload"), ("POST", "/models/load"),
    ("POST", "/models/unload"), ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
]
# Run again against a pooling model (tests/server/test_server_pooling.py), where they do work.
POOLING_OPERATIONS = [("POST", "/v1/embeddings"), ("POST", "/v1/score"), ("POST", "/v1/rerank")]
# The web page's routes (server/ui/routes.py) stay out of the OpenAPI document and take no body or
# parameters: they are fuzzed with arbitrary query strings instead.
UI_OPERATIONS = [("GET", "/ui"), ("GET", "/ui/api/info")]


def bounded_schema(url: str, request_model: str, ceilings: dict[str, int]):
    """The server's OpenAPI document as a schemathesis schema, with the given integer fields of
    `request_model` capped so that generated requests stay cheap."""
    # The first request builds the document (every API's models): allow a loaded machine its time.
    doc = httpx.get(f"{url}/openapi.json", timeout=60).json()
    props = doc["components"]["schemas"][request_model]["properties"]
    for name, ceiling in ceilings.items():
        for option in props[name].get("anyOf", [props[name]]):
            if option.get("type") == "integer":
                option["maximum"] = ceiling
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=url, request_timeout=30)
    return schema


@pytest.fixture(scope="module")
def api_schema(live):
    return bounded_schema(live.url, "CompletionRequest", {"max_tokens": 8, "n": 3})


def test_every_operation_is_fuzzed(api_schema):
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), UI_OPERATIONS, ids=[p for _, p in UI_OPERATIONS])
def test_ui_routes_have_no_server_errors(live, method, path):
    @given(query=st.dictionaries(st.text(max_size=20), st.text(max_size=80), max_size=4))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(query):
        response = httpx.request(method, live.url + path, params=query, timeout=30)
        assert response.status_code == 200, (query, response.text)

    check()


CASES = [(m, p, mode) for m, p in OPERATIONS for mode in GenerationMode
         if m == "POST" or mode is GenerationMode.POSITIVE]  # a bodiless GET has no invalid form


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_server_errors(api_schema, method, path, mode):
    operation = api_schema[path][method]
    examples = MAX_EXAMPLES * 2 if path == "/v1/completions" else MAX_EXAMPLES

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call()
        assert response.status_code < 500, (case.body, response.text)
        case.validate_response(response, checks=[not_a_server_error])

    check()


def test_engine_survived_the_fuzzing(live):
    assert live.engine.is_alive
    wait_idle(live.engine, timeout=30)


@pytest.fixture(scope="module")
def chat_schema(live_chat):
    """The document of the server with a chat template, so that chat requests really run."""
    return bounded_schema(live_chat.url, "ChatCompletionRequest",
                          {"max_tokens": 8, "max_completion_tokens": 8, "n": 3})


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_chat_with_a_template_has_no_server_errors(chat_schema, live_chat, mode):
    operation = chat_schema["/v1/chat/completions"]["POST"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        if isinstance(case.body, dict) and case.body.get("max_tokens") is None \
                and case.body.get("max_completion_tokens") is None:
            case.body["max_tokens"] = 8  # keep valid cases quick; "up to the context" is tested
        response = case.call()
        assert response.status_code < 500, (case.body, response.text)

    check()
    wait_idle(live_chat.engine, timeout=30)
