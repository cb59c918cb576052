"""nanovllm's OpenAI-compatible HTTP server (FastAPI + one engine thread).

Layout: protocol (request models), prompts (validation and SamplingParams), engine_loop
(the engine thread), request_stream (per-request output queue), completions and streaming
(response building), routes, app (build_app), metrics, errors, cli (`nanovllm serve`).
"""
