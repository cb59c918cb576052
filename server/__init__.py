"""nanovllm's OpenAI-compatible HTTP server (FastAPI over an EngineClient, see
nanovllm/engine_client.py: an engine thread, or replicas on Ray Serve).

Layout, by role: cli (`nanovllm serve`) and app (build_app); middleware (request id, API key,
body limit); protocol (request and response models), structured and chat_template (fields
checked before the engine); endpoints/ (one module per endpoint); serving (what they share:
submitting engine requests, the output stream, the one SSE driver); errors, metrics; ui/ (the
web page); ray/ (scale-out).
"""
