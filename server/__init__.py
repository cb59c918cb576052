"""nanovllm's OpenAI-compatible HTTP server (FastAPI + one engine thread).

Layout: protocol (request models), prompts (validation and SamplingParams), request_stream
(per-request output queue; the engine is an EngineClient, see nanovllm/engine_client.py), completions and streaming
(response building), routes, app (build_app), metrics, errors, cli (`nanovllm serve`).
"""
