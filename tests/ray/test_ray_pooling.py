"""Two Ray Serve engine replicas serving an embedding model behind the OpenAI endpoint:
/v1/embeddings, /v1/score and /v1/rerank answer as a local engine on the same checkpoint does,
checked by the ingress from what the replica ships it (its pooling config, server/ray/replica.py),
a generation request to the encoder is the same 400 as on one engine, and texts that share
their first block still spread over both replicas (no prefix affinity: nothing is cached).

Failures and generation's affinity are test_ray_serve.py's, on GPT-2.
"""

from __future__ import annotations

import re

import httpx
import numpy as np
import openai
import pytest
from bert_checkpoints import TEXTS
from ray_helpers import start_deployment

from nanovllm import LLM

pytestmark = pytest.mark.ray

MODEL = "tiny-embedder-ray"


@pytest.fixture(scope="module")
def embed_replica(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    from bert_checkpoints import write_st_embedder

    from nanovllm import EngineConfig

    model_dir = write_st_embedder(tmp_path_factory.mktemp("ray-embed") / "st", pooling="mean")
    deployment = start_deployment(EngineConfig(str(model_dir)), num_cpus=2,
                                  served_model_name=MODEL)
    yield deployment.live, model_dir
    deployment.stop()


@pytest.fixture(scope="module")
def local(embed_replica):
    return LLM(str(embed_replica[1]))


def test_embeddings_equal_a_local_engines(embed_replica, local):
    served = openai.OpenAI(base_url=f"{embed_replica[0].url}/v1", api_key="unused",
                           max_retries=0, timeout=120).embeddings.create(model=MODEL,
                                                                         input=TEXTS[:4])
    want = [o.outputs.embedding for o in local.embed(TEXTS[:4], use_tqdm=False)]
    np.testing.assert_allclose([d.embedding for d in served.data], want, atol=1e-6)
    assert served.usage.prompt_tokens == sum(
        len(o.prompt_token_ids) for o in local.embed(TEXTS[:4], use_tqdm=False))


def test_score_and_rerank_equal_a_local_engines(embed_replica, local):
    query, docs = TEXTS[0], TEXTS[1:4]
    want = [o.outputs.score for o in local.score(query, docs, use_tqdm=False)]
    with httpx.Client(base_url=embed_replica[0].url, timeout=120) as http:
        score = http.post("/v1/score", json={"model": MODEL, "text_1": query, "text_2": docs})
        rerank = http.post("/v1/rerank", json={"model": MODEL, "query": query,
                                                "documents": docs, "top_n": 2})
    assert score.status_code == 200 and rerank.status_code == 200, (score.text, rerank.text)
    np.testing.assert_allclose([d["score"] for d in score.json()["data"]], want, atol=1e-6)
    best = sorted(range(3), key=lambda i: -want[i])[:2]
    assert [r["index"] for r in rerank.json()["results"]] == best


def test_the_ingress_checks_pooling_requests(embed_replica):
    """Refused before any replica sees them, each naming its field, as on one engine."""
    with httpx.Client(base_url=embed_replica[0].url, timeout=60) as http:
        cases = [("/v1/embeddings", {"input": ""}, "input"),
                 ("/v1/embeddings", {"input": "x", "dimensions": 8}, "dimensions"),
                 ("/v1/embeddings", {"input": "word " * 200}, "input"),
                 ("/v1/completions", {"prompt": "x", "max_tokens": 1}, "model")]
        for path, body, param in cases:
            r = http.post(path, json={"model": MODEL, **body})
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"]["param"] == param, r.text


def test_texts_sharing_a_prefix_spread_over_the_replicas(embed_replica):
    """Texts that start with the same block of tokens (a rerank's pairs all start with the
    query) go where there is room, not where a prefix cache would be: a pooling model has
    none. One at a time, so that no replica is ever busier than the other (which would
    spread them anyway); all 12 on one replica would be a chance of 1 in 2,048."""
    def prompt_tokens() -> dict[str, float]:
        text = httpx.get(f"{embed_replica[0].url}/metrics", timeout=30).text
        return {m[1]: float(m[2]) for m in re.finditer(
            r'^vllm:prompt_tokens_total\{[^}]*replica="([^"]+)"\} (\S+)$', text, re.M)}

    before = prompt_tokens()
    prefix = " ".join(f"w{i}" for i in range(12))  # well over one 16-token block
    with httpx.Client(base_url=embed_replica[0].url, timeout=120) as http:
        for i in range(12):
            r = http.post("/v1/embeddings", json={"model": MODEL, "input": f"{prefix} {i}"})
            assert r.status_code == 200, r.text
    after = prompt_tokens()
    served = {r: v - before.get(r, 0.0) for r, v in after.items() if v > before.get(r, 0.0)}
    assert len(served) == 2, served


def test_metrics_count_the_pooling_requests(embed_replica):
    """One count per text embedded (the earlier tests embedded some through the replicas)."""
    text = httpx.get(f"{embed_replica[0].url}/metrics", timeout=30).text
    line = next(ln for ln in text.splitlines()
                if ln.startswith("nanovllm:pooling_requests_total{") and 'task="embed"' in ln)
    assert float(line.split()[-1]) >= 4 + 12
