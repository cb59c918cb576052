"""Embeddings, score and rerank over real HTTP: the real `openai` client and raw httpx against
a real server on checkpoints sentence-transformers writes; results equal sentence-transformers',
mixed and concurrent requests, every bad input a 4xx naming its field, and each model serving
only what it is."""

from __future__ import annotations

import base64
import concurrent.futures

import httpx
import numpy as np
import openai
import pytest
from bert_checkpoints import PAIRS, TEXTS, write_hf_bert, write_st_embedder
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from server_helpers import MODEL, error_of, make_engine, metric, serve, wait_idle
from test_server_fuzz import MAX_EXAMPLES, POOLING_OPERATIONS, bounded_schema

from nanovllm.server.app import build_app
from nanovllm.values.limits import ServerLimits

st = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    model_dir = write_st_embedder(tmp_path_factory.mktemp("srv-embed") / "st", pooling="cls")
    engine = make_engine(model_dir)
    srv = serve(build_app(engine, served_model_name=MODEL, limits=ServerLimits(
        max_pooling_inputs_per_request=8)), engine)
    yield srv, model_dir
    srv.stop()
    engine.shutdown()


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    model_dir = write_hf_bert(tmp_path_factory.mktemp("srv-rerank") / "ce", classifier_labels=1,
                              seed=4)
    engine = make_engine(model_dir)
    srv = serve(build_app(engine, served_model_name=MODEL), engine)
    yield srv, model_dir
    srv.stop()
    engine.shutdown()


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_embeddings_equal_sentence_transformers(embedder):
    srv, model_dir = embedder
    want = st.SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS[:5])
    for fmt in ("float", openai.NOT_GIVEN):  # by default the client asks base64, decodes it
        got = client(srv).embeddings.create(model=MODEL, input=TEXTS[:5], encoding_format=fmt)
        vectors = np.array([d.embedding for d in got.data])
        np.testing.assert_allclose(vectors, want, atol=1e-5)
        assert [d.index for d in got.data] == list(range(5))
        assert got.usage.prompt_tokens == got.usage.total_tokens > 5
    one = client(srv).embeddings.create(model=MODEL, input="Hello world")
    np.testing.assert_allclose(one.data[0].embedding, want[0], atol=1e-5)


def test_token_id_inputs_and_raw_base64(embedder):
    srv, _ = embedder
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        ids = http.post("/tokenize", json={"prompt": "Hello world"}).json()["tokens"]
        text = http.post("/v1/embeddings", json={"input": "Hello world"}).json()
        for body in ({"input": ids}, {"input": [ids, ids]}):
            r = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
            for d in r["data"]:
                got = np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                np.testing.assert_allclose(got, text["data"][0]["embedding"], atol=1e-6)
    wait_idle(srv.engine)


def test_bad_embedding_inputs_are_4xx_naming_the_field(embedder):
    srv, _ = embedder
    long = " ".join(["the cat sat on the mat"] * 30)
    cases = [({"input": ""}, "input"), ({"input": []}, "input"), ({"input": [[]]}, "input"),
             ({"input": [10**7]}, "input"), ({"input": ["a"] * 9}, "input"),
             ({"input": long}, "input"), ({"input": "a", "dimensions": 8}, "dimensions"),
             ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
             ({"input": "a", "truncate_prompt_tokens": 10**6}, "truncate_prompt_tokens"),
             ({"input": "a", "pooling_type": "max"}, "pooling_type")]
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for body, param in cases:
            err = error_of(http.post("/v1/embeddings", json=body), 400)
            assert err["param"] == param, (body, err)
        ok = http.post("/v1/embeddings", json={"input": long, "truncate_prompt_tokens": 20})
        assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 20
        # What an encoder does not do: generate.
        for path, body in (("/v1/completions", {"prompt": "hi", "max_tokens": 2}),):
            assert error_of(http.post(path, json=body), 400)["param"] == "model"
    wait_idle(srv.engine)


def test_concurrent_mixed_requests_each_get_their_own_vectors(embedder):
    srv, model_dir = embedder
    want = st.SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS)
    c = client(srv)

    def one(i: int):
        texts = [TEXTS[(i + j) % len(TEXTS)] for j in range(1 + i % 4)]
        got = c.embeddings.create(model=MODEL, input=texts)
        return [(i + j) % len(TEXTS) for j in range(len(texts))], [d.embedding for d in got.data]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for which, vectors in pool.map(one, range(24)):
            np.testing.assert_allclose(vectors, want[which], atol=1e-5)
    wait_idle(srv.engine)


def test_score_and_rerank_equal_cross_encoder_predict(reranker):
    srv, model_dir = reranker
    queries, docs = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    want = st.CrossEncoder(str(model_dir), device="cpu").predict(PAIRS)
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for path in ("/v1/score", "/score"):
            r = http.post(path, json={"model": MODEL, "text_1": queries, "text_2": docs}).json()
            np.testing.assert_allclose([d["score"] for d in r["data"]], want, atol=1e-5)
            assert r["usage"]["prompt_tokens"] > 0
        q = PAIRS[0][0]
        want_q = st.CrossEncoder(str(model_dir), device="cpu").predict([(q, d) for d in docs])
        for path in ("/v1/rerank", "/rerank"):
            r = http.post(path, json={"query": q, "documents": docs, "top_n": 2}).json()
            order = list(np.argsort(-want_q)[:2])
            assert [x["index"] for x in r["results"]] == order
            np.testing.assert_allclose([x["relevance_score"] for x in r["results"]],
                                       want_q[order], atol=1e-5)
            assert r["results"][0]["document"]["text"] == docs[order[0]]
        r = http.post("/v1/rerank", json={"query": q, "documents": [{"text": d} for d in docs],
                                          "return_documents": False}).json()
        assert len(r["results"]) == len(docs) and "document" not in r["results"][0]
        # A cross-encoder makes no embeddings.
        err = error_of(http.post("/v1/embeddings", json={"input": "a"}), 400)
        assert err["param"] == "model" and "/v1/score" in err["message"]
        for body, param in (({"query": "q", "documents": []}, "documents"),
                            ({"query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
                            ({"query": "", "documents": ["d"]}, "query"),
                            ({"query": "q", "documents": ["d", ""]}, "documents")):
            assert error_of(http.post("/v1/rerank", json=body), 400)["param"] == param, body
        err = error_of(http.post("/v1/score", json={"text_1": ["a", "b"], "text_2": ["c"] * 3}),
                       400)
        assert err["param"] == "text_1"
        metrics = http.get("/metrics").text
        assert metric(metrics, "nanovllm:pooling_requests_total", task="score") >= 8
    wait_idle(srv.engine)


def test_score_on_an_embedding_model_is_the_cosine(embedder):
    srv, model_dir = embedder
    model = st.SentenceTransformer(str(model_dir), device="cpu")
    a, b = model.encode(["hello world"]), model.encode(["the cat sat", "the dog"])
    want = (a @ b.T)[0]  # normalized vectors
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        r = http.post("/v1/score", json={"text_1": "hello world",
                                         "text_2": ["the cat sat", "the dog"]}).json()
        np.testing.assert_allclose([d["score"] for d in r["data"]], want, atol=1e-5)
        metrics = http.get("/metrics").text
        assert metric(metrics, "nanovllm:pooling_requests_total", task="embed") >= 3


def test_bad_score_and_rerank_inputs_are_4xx_naming_the_field(embedder):
    """Empty, too many and too long (without truncate_prompt_tokens) texts, each refused
    naming the field it came in, before anything runs."""
    srv, _ = embedder
    long = " ".join(["the cat sat on the mat"] * 30)
    cases = [("/v1/score", {"text_1": "a", "text_2": []}, "text_2"),
             ("/v1/score", {"text_1": [], "text_2": "b"}, "text_1"),
             ("/v1/score", {"text_1": "", "text_2": "b"}, "text_1"),
             ("/v1/score", {"text_1": "a", "text_2": ["b", ""]}, "text_2"),
             ("/v1/score", {"text_1": "a", "text_2": ["b"] * 9}, "text_2"),
             ("/v1/score", {"text_1": long, "text_2": "b"}, "text_1"),
             ("/v1/score", {"text_1": "a", "text_2": long}, "text_2"),
             ("/score", {"text_1": "a", "text_2": "b", "truncate_prompt_tokens": 10**6},
              "truncate_prompt_tokens"),
             ("/v1/rerank", {"query": "q", "documents": []}, "documents"),
             ("/v1/rerank", {"query": "q", "documents": ["d"] * 9}, "documents"),
             ("/v1/rerank", {"query": long, "documents": ["d"]}, "query"),
             ("/rerank", {"query": "q", "documents": ["d", long]}, "documents"),
             ("/rerank", {"query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
             ("/v1/embeddings", {"input": "a", "dimensions": 0}, "dimensions"),
             ("/v1/embeddings", {"input": "a", "dimensions": -3}, "dimensions"),
             ("/v1/embeddings", {"input": "a", "dimensions": 10**6}, "dimensions")]
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for path, body, param in cases:
            err = error_of(http.post(path, json=body), 400)
            assert err["param"] == param, (path, body, err)
        ok = http.post("/v1/score", json={"text_1": long, "text_2": "b",
                                          "truncate_prompt_tokens": 16})
        assert ok.status_code == 200, ok.text
    wait_idle(srv.engine)


def test_an_encoder_refuses_every_generation_endpoint_naming_model(embedder):
    """Each front end of the chat and completions path says what the model does instead."""
    srv, _ = embedder
    messages = [{"role": "user", "content": "hi"}]
    openai_shaped = [("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
                     ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "n": 2,
                                          "use_beam_search": True}),
                     ("/v1/chat/completions", {"messages": messages}),
                     ("/v1/chat/completions", {"messages": messages, "stream": True}),
                     ("/v1/responses", {"input": "hi"}),
                     ("/invocations", {"prompt": "hi"}),
                     ("/invocations", {"messages": messages})]
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        for path, body in openai_shaped:
            err = error_of(http.post(path, json=body), 400)
            assert err["param"] == "model" and "/v1/embeddings" in err["message"], (path, err)
        r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4,
                                            "messages": messages})
        assert r.status_code == 400 and "/v1/embeddings" in r.json()["error"]["message"], r.text


def test_gpt2_served_for_pooling_embeds_its_last_token(tiny_ckpt):
    """--runner pooling on GPT-2: /v1/embeddings through the openai client equals transformers'
    GPT2Model's normalized last hidden state."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2Model.from_pretrained(tiny_ckpt).eval()

    def gpt2_last_hidden(token_ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            hidden = model(torch.tensor([token_ids])).last_hidden_state[0, -1].numpy()
        return hidden / np.linalg.norm(hidden)

    engine = make_engine(tiny_ckpt, runner="pooling")
    srv = serve(build_app(engine, served_model_name=MODEL), engine)
    try:
        got = client(srv).embeddings.create(model=MODEL, input=TEXTS[:3], encoding_format="float")
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            for text, d in zip(TEXTS[:3], got.data, strict=True):
                ids = http.post("/tokenize", json={"prompt": text}).json()["tokens"]
                np.testing.assert_allclose(d.embedding, gpt2_last_hidden(ids),
                                           atol=1e-5)
            err = error_of(http.post("/v1/completions", json={"prompt": "hi"}), 400)
            assert err["param"] == "model"
    finally:
        srv.stop()
        engine.shutdown()


def test_a_generation_model_refuses_pooling_requests(live):
    with httpx.Client(base_url=live.url, timeout=60) as http:
        for path, body in (("/v1/embeddings", {"input": "a"}),
                           ("/v1/score", {"text_1": "a", "text_2": "b"}),
                           ("/v1/rerank", {"query": "a", "documents": ["b"]})):
            err = error_of(http.post(path, json=body), 400)
            assert err["param"] == "model" and "--runner pooling" in err["message"]


@pytest.mark.parametrize(("method", "path"), POOLING_OPERATIONS, ids=[p for _, p in POOLING_OPERATIONS])
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_fuzzed_pooling_requests_get_no_server_errors(embedder, reranker, method, path, mode):
    for srv, _ in (embedder, reranker):
        schema = bounded_schema(srv.url, "EmbeddingRequest", {"dimensions": 64})
        operation = schema[path][method]

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES // 2, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call()
            assert response.status_code < 500, (case.body, response.text)

        check()
        assert srv.engine.is_alive
        wait_idle(srv.engine, timeout=30)
