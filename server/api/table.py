"""The route table: every API the server answers, one line each; build_app includes them in
this order. An API is a folder of its own (server/api/<name>/: its request models, its routes,
its renderer and error shape) that imports no other; a new API is a new folder and one line
here.

The front ends of other APIs over the chat path (responses: OpenAI's Responses; messages:
Anthropic's) are handed the chat endpoint here, as a ChatPath.
"""

from __future__ import annotations

from nanovllm.server.api import invocations
from nanovllm.server.api.chat import routes as chat
from nanovllm.server.api.completions import routes as completions
from nanovllm.server.api.embeddings import routes as embeddings
from nanovllm.server.api.info import routes as info
from nanovllm.server.api.messages import routes as messages
from nanovllm.server.api.rerank import routes as rerank
from nanovllm.server.api.responses import routes as responses
from nanovllm.server.api.score import routes as score
from nanovllm.server.api.tokenize import routes as tokenize
from nanovllm.server.chat.front_end import ChatPath

CHAT_PATH = ChatPath(chat.create_chat_completion, chat.prepare_chat)
ROUTERS = [completions.router, chat.router, embeddings.router, score.router, rerank.router,
           tokenize.router, info.router, invocations.router,
           responses.build_router(CHAT_PATH), messages.build_router(CHAT_PATH)]
