"""nanovllm's OpenAI-compatible HTTP server (FastAPI over an EngineClient, see
nanovllm/engine_client.py: an engine thread, or replicas on Ray Serve).

Layout, by role: cli (`nanovllm serve`) and app (build_app); middleware (request id, API key,
body limit); api/ (one folder per API: its request models, routes, renderer and error shape;
api/table.py lists them); chat/ (the chat path the chat APIs share: request, template, plan,
run, the answer as values in result.py, output, reasoning, tool calls); protocol (the models
the APIs share), structured (fields checked before the engine); serving (what every API
shares: submitting engine requests, the output stream, server-sent events); errors, metrics;
ui/ (the web page); ray/ (scale-out).
"""
