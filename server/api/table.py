"""The route table: every API the server answers, one line each (its folder's `API`, an
APISpec: routes, error shape, key header); build_app includes them in this order. An API is a
folder of its own (server/api/<name>/: its request models, its routes, its renderer and error
shape) that imports no other; a new API is a new folder and one line here.
"""

from __future__ import annotations

from nanovllm.server.api import invocations
from nanovllm.server.api.chat import routes as chat
from nanovllm.server.api.completions import routes as completions
from nanovllm.server.api.embeddings import routes as embeddings
from nanovllm.server.api.info import routes as info
from nanovllm.server.api.lora import routes as lora
from nanovllm.server.api.messages import routes as messages
from nanovllm.server.api.ollama import routes as ollama
from nanovllm.server.api.rerank import routes as rerank
from nanovllm.server.api.responses import routes as responses
from nanovllm.server.api.score import routes as score
from nanovllm.server.api.spec import APISpec
from nanovllm.server.api.tokenize import routes as tokenize
from nanovllm.server.models import routes as models

APIS: list[APISpec] = [
    completions.API,
    chat.API,
    embeddings.API,
    score.API,
    rerank.API,
    tokenize.API,
    info.API,
    lora.API,
    models.API,
    invocations.API,
    responses.API,
    messages.API,
    ollama.API,
]
